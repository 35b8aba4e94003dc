"""Checkpoint files: writing them atomically, reading them without running code, loading weights strictly.

A training checkpoint is one ``torch.save`` file in the released layout -- ``encoder``, ``predictor``,
``target_encoder`` (state dicts whose keys carry the ``module.`` prefix of a DDP-wrapped model), ``opt``,
``scaler``, ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr`` -- plus openjepa's ``step``, ``config``
(a plain dict) and ``rng`` (tensors only). Everything in it loads with ``torch.load(weights_only=True)``.

Every failure to read or fit a file is a :class:`~openjepa.errors.CheckpointError` whose message names the file,
what is wrong and what to do; :func:`load_strict` is the one place that reports weights that do not fit a model.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _read_safetensors
from torch import nn

from .atomic_write import atomic_write
from .errors import CheckpointError
from .run_folder import checkpoint_in

DDP_PREFIX = "module."
COMPILE_PREFIX = "_orig_mod."
SHOWN = 4  # mismatched keys listed in an error message
# The entry recording the input normalisation the weights were trained with. The code says "normalisation"
# everywhere else; the key keeps its first spelling because every checkpoint written so far carries it.
NORMALISATION_KEY = "normalization"
OFFICIAL_LICENSE = "CC-BY-NC-4.0"  # the licence of the released I-JEPA weights (and of weights trained from them)
OPENJEPA_LICENSE = "Apache-2.0"  # the licence of weights trained from scratch with openjepa
# A fine-tuned classifier's checkpoint (``openjepa finetune``) says what it is, and in which version of its layout.
CLASSIFIER_KIND = "openjepa-finetune"
CLASSIFIER_FORMAT_VERSION = 1


def add_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = DDP_PREFIX) -> dict[str, torch.Tensor]:
    return {k if k.startswith(prefix) else prefix + k: v for k, v in state_dict.items()}


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = DDP_PREFIX) -> dict[str, torch.Tensor]:
    """Remove a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix from every key that has it."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefix) or key.startswith(COMPILE_PREFIX):
            key = key[len(prefix):] if key.startswith(prefix) else key[len(COMPILE_PREFIX):]
        out[key] = value
    return out


def is_official_checkpoint(state: Mapping[str, Any]) -> bool:
    """True for a released checkpoint, False for one written by openjepa (which always records its ``config``)."""
    return "config" not in state and "openjepa_version" not in state


def is_classifier_checkpoint(state: Mapping[str, Any]) -> bool:
    """True for a fine-tuned classifier's checkpoint (written by ``openjepa finetune``)."""
    return state.get("kind") == CLASSIFIER_KIND


# -- writing --------------------------------------------------------------------------------------------------------
def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (see :mod:`openjepa.atomic_write`).

    A crash or a full disk mid-write leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:
            torch.save(dict(state), f)
    except BaseException as exc:
        cause = _os_error(exc)
        if cause is not None:
            kept = f"the previous checkpoint at {path} is intact" if path.exists() else "no checkpoint was written"
            raise CheckpointError(f"could not write checkpoint {path}: {cause.strerror or cause}; {kept}") from exc
        raise
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


# -- reading --------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or a run folder's latest) without unpickling arbitrary objects (``weights_only=True``).

    Raises :class:`CheckpointError` with an explanation for a missing, empty, truncated, foreign or unsafe file.
    """
    path = checkpoint_in(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it did not finish")
    kind = _file_kind(path)
    if kind == "safetensors" or path.suffix == ".safetensors":
        return load_safetensors(path, map_location)
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


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (the format never executes anything), with a clear error for a missing or damaged
    file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return _read_safetensors(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"could not read {path}: it is truncated or not a safetensors file ({exc})") from exc


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any],
                    classifiers: bool = False) -> tuple[dict[str, Any], str]:
    """An I-JEPA checkpoint dict (a file, a run folder's trained model, or a dict already loaded) and a name for it
    in messages; a file of another model is refused here, and so is a fine-tuned classifier's unless
    ``classifiers`` (a reader of its encoder)."""
    if isinstance(source, Mapping):
        state, origin = dict(source), "the checkpoint"
    else:
        path = checkpoint_in(source)
        state, origin = load_checkpoint(path), str(path)
    if is_classifier_checkpoint(state):
        if classifiers:
            return state, origin
        raise CheckpointError(f"{origin} holds a fine-tuned classifier (openjepa finetune), not an I-JEPA model: "
                              f"its encoder alone is there (no predictor, one encoder). `openjepa predict`, "
                              f"`openjepa export`, `openjepa eval` and `openjepa embed` read it")
    if not any(isinstance(state.get(k), Mapping) for k in ("encoder", "target_encoder")):
        found = ", ".join(map(str, list(state)[:8])) or "nothing"
        raise CheckpointError(
            f"{origin} is not an I-JEPA checkpoint: it has no 'encoder' or 'target_encoder' state dict (found "
            f"{found}). Pass a released I-JEPA .pth.tar file or an openjepa training checkpoint"
        )
    return state, origin


# -- fitting weights to a model -------------------------------------------------------------------------------------
def misfits(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """What keeps ``state_dict`` from loading strictly into ``module``: ``wrong_shapes`` as ``(key, expected,
    found)`` and ``missing`` / ``unexpected`` keys (empty lists when it fits)."""
    expected = module.state_dict()
    return {
        "wrong_shapes": [(k, tuple(v.shape), tuple(state_dict[k].shape)) for k, v in expected.items()
                         if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)],
        "missing": [k for k in expected if k not in state_dict],
        "unexpected": [k for k in state_dict if k not in expected],
    }


def _listing(label: str, items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{label}: {'; '.join(items[:SHOWN])}{more}"


def describe_misfits(found: dict[str, list]) -> str | None:
    """One line naming the first misfits of :func:`misfits` (None when there are none)."""
    shapes = [f"{k} expected {e}, found {f}" for k, e, f in found["wrong_shapes"]]
    parts = [_listing(label, items) for label, items in
             (("wrong shapes", shapes), ("missing", found["missing"]), ("unexpected", found["unexpected"])) if items]
    return " | ".join(parts) or None


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, origin: str = "",
                advice: str | None = None, assign: bool = False) -> None:
    """``module.load_state_dict(sd, strict=True)`` (``module.``/``_orig_mod.`` prefixes removed), or a
    :class:`CheckpointError` naming the mismatched keys with expected and found shapes, the architecture the
    module expects and ``advice`` (default: the file's description of the model and its weights disagree).

    ``assign=True`` makes the module adopt the given tensors instead of copying them (no second copy of a large
    model in memory); each parameter keeps its ``requires_grad``."""
    state_dict = strip_prefix(state_dict)
    report = describe_misfits(misfits(module, state_dict))
    if report:
        arch = module.arch() if hasattr(module, "arch") else type(module).__name__
        advice = advice or ("The file's description of the model (its config) and its weights disagree, or the "
                            "weights belong to another model")
        source = f" (file: {origin})" if origin else ""
        raise CheckpointError(f"the {what} weights do not fit the model: {report}{source}. The model expects "
                              f"{arch}. {advice}")
    module.load_state_dict(state_dict, strict=True, assign=assign)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        raise CheckpointError(f"the {what} weights{' in ' + origin if origin else ''} left some tensors of the "
                              f"model unset")


def load_weights(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Deprecated: :func:`load_strict` (which also names the file and can adopt the tensors)."""
    warnings.warn("openjepa.checkpoint.load_weights is deprecated: use load_strict", DeprecationWarning, stacklevel=2)
    load_strict(module, state_dict, what)
