"""Checkpoint files: atomic writes, and loading that never runs code from the file.

A training checkpoint is one ``torch.save`` file in the released layout -- ``encoder``, ``predictor``,
``target_encoder`` (state dicts whose keys carry the ``module.`` prefix of a DDP-wrapped model), ``opt``,
``scaler``, ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr`` -- plus openjepa's ``step``, ``config``
(a plain dict) and ``rng`` (tensors only). Everything in it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

DDP_PREFIX = "module."


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says why and what to do."""


def add_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = DDP_PREFIX) -> dict[str, torch.Tensor]:
    return {k if k.startswith(prefix) else prefix + k: v for k, v in state_dict.items()}


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = DDP_PREFIX) -> dict[str, torch.Tensor]:
    """Remove a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix from every key that has it."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefix) or key.startswith("_orig_mod."):
            key = key[len(prefix):] if key.startswith(prefix) else key[len("_orig_mod."):]
        out[key] = value
    return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed to disk, then renamed.

    A crash or a full disk mid-write leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = _os_error(exc)
        if cause is not None:
            kept = f"the previous checkpoint at {path} is intact" if path.exists() else "no checkpoint was written"
            raise CheckpointError(f"could not write checkpoint {path}: {cause.strerror or cause}; {kept}") from exc
        raise
    _fsync_dir(path.parent)
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write. torch.save reports a write that fails inside its zip writer (a full
    disk, a lost network mount) as a RuntimeError ("unexpected pos ..."); the OSError is its ``__context__``."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain; bounded in case of a cycle
        if seen is None:
            return None
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``).

    Raises :class:`CheckpointError` with an explanation for a missing, empty, truncated, foreign or unsafe file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it did not finish")
    kind = _file_kind(path)
    if kind == "safetensors" or path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    if kind not in ("zip", "pickle"):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: {kind}. Pass the .pth / .pth.tar / .pt / .safetensors file"
        )
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of old files says nothing useful here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unsafe_message(path, exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure to parse the file is a damaged or foreign file
        detail = str(exc).splitlines()[0].split(". ")[0] if str(exc) else "no detail"
        raise CheckpointError(
            f"could not read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(exc).__name__}: {detail}). If it was downloaded or copied, do it again"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of state dicts")
    return state


def _file_kind(path: Path) -> str:
    """``zip`` (torch.save), ``pickle`` (older torch.save), ``safetensors``, or a description of what it is."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "it is a web page (an HTML error or login page saved instead of the file?)"
    sample = head.decode("utf-8", errors="replace")
    if "\ufffd" in sample[:-3] or any(c < " " and c not in "\t\r\n" for c in sample):
        return "its content is in no format openjepa reads"
    first_line = sample.strip().splitlines()[0][:40] if sample.strip() else ""
    return f"it is a text file (it starts with {first_line!r})"


def _unsafe_message(path: Path, exc: pickle.UnpicklingError) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f"the Python object {found.group(1)}" if found else "Python objects other than tensors and containers"
    return (
        f"refusing to load {path}: it refers to {what}, and unpickling such objects can run arbitrary code. "
        f"openjepa only loads tensors and plain containers (torch.load with weights_only=True), so nothing in the "
        f"file was run. If the file comes from a source you trust, re-save its tensors as a plain state dict "
        f"(torch.save(model.state_dict(), ...)) or as safetensors"
    )


def _load_safetensors(path: Path, map_location) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = str(map_location) if not isinstance(map_location, str) else map_location
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"could not read safetensors file {path}: {exc}") from exc


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with an error that names the mismatched keys and
    shapes (first few) and the architecture the module expects, instead of a raw traceback."""
    state_dict = strip_prefix(state_dict)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        arch = module.arch() if hasattr(module, "arch") else type(module).__name__
        parts = []
        for label, items in (("shape mismatches", wrong), ("missing keys", missing), ("unexpected keys", unexpected)):
            if items:
                more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
                parts.append(f"{label}: {'; '.join(items[:4])}{more}")
        raise CheckpointError(
            f"the {what} weights do not fit the model ({' | '.join(parts)}). The model expects {arch}; check that "
            f"the config's model section (arch, patch_size, img_size, pred_depth, pred_emb_dim) matches the "
            f"checkpoint's"
        )
    module.load_state_dict(state_dict, strict=True)
