"""Loading weights into a module with errors that say what does not fit, and safetensors files in and out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from ..checkpoint import CheckpointError, strip_prefix
from ..models.pos_embed import GridSize, resample_pos_embed

SHOWN = 4  # mismatched keys listed in an error message
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _listing(label: str, items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{label}: {'; '.join(items[:SHOWN])}{more}"


def mismatch_report(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """``None`` when ``state_dict`` fits ``module`` exactly, else a one-line description of the first misfits."""
    expected = module.state_dict()
    wrong = [
        f"{k} expected {tuple(v.shape)}, found {tuple(state_dict[k].shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    parts = [_listing(label, items) for label, items in
             (("wrong shapes", wrong), ("missing", missing), ("unexpected", unexpected)) if items]
    return " | ".join(parts) or None


def load_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, origin: str, assign: bool = False
) -> None:
    """``module.load_state_dict(sd, strict=True)`` (``module.`` prefixes removed), or a :class:`CheckpointError`
    naming the mismatched keys with expected and found shapes and the architecture the module expects.

    ``assign=True`` makes the module adopt the given tensors instead of copying them (no second copy of a large
    model in memory); each parameter keeps its ``requires_grad``."""
    state_dict = strip_prefix(state_dict)
    report = mismatch_report(module, state_dict)
    if report:
        arch = module.arch() if hasattr(module, "arch") else type(module).__name__
        raise CheckpointError(
            f"the {what} weights in {origin} do not fit the expected architecture {arch}: {report}. The file's "
            f"description of the model (its config) and its weights disagree, or the weights belong to another model"
        )
    module.load_state_dict(state_dict, strict=True, assign=assign)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        raise CheckpointError(f"the {what} weights in {origin} left some tensors of the model unset")


def build_for_loading(factory: Callable[[], ModuleT]) -> ModuleT:
    """Build a module whose weights are about to be replaced, without spending time initialising them: on the
    meta device (no memory, no random init; load it with ``assign=True``) when its constructor allows, else
    normally. For a ViT-H the random initialisation alone takes minutes on a laptop CPU."""
    try:
        with torch.device("meta"):
            return factory()
    except (NotImplementedError, RuntimeError):  # a constructor that reads tensor values cannot run on meta
        return factory()


def as_float32(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in float32 (the models train and export in float32; a no-op for float32 files)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def with_pos_embed_for(
    state_dict: Mapping[str, torch.Tensor], key: str, new_grid: GridSize
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose ``key`` position embeddings are resampled (bicubic) to ``new_grid``."""
    out = dict(state_dict)
    pos = out[key]
    side = int(round(pos.shape[1] ** 0.5))
    out[key] = resample_pos_embed(pos, new_grid, (side, side))
    return out


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write contiguous, unshared CPU copies (safetensors refuses views and tensors sharing memory)."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(path), metadata={"format": "pt", **(metadata or {})})


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never executes anything), with a clear error for a missing or damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"could not read {path}: it is truncated or not a safetensors file ({exc})") from exc


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``, or a :class:`CheckpointError` saying what is wrong with it."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}: it is not {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def write_json(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
