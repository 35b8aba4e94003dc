"""The files of an export folder: safetensors weights and JSON descriptions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError

WEIGHTS = "model.safetensors"  # every export folder's weights ...
CONFIG = "config.json"  # ... and description, whatever the format


def write_export(out_dir: str | Path, weights: Mapping[str, torch.Tensor], config: dict,
                 metadata: dict[str, str] | None = None) -> Path:
    """Create the export folder ``out_dir`` with its ``model.safetensors`` and ``config.json``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(weights, out / WEIGHTS, metadata)
    write_json(config, out / CONFIG)
    return out


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write contiguous, unshared CPU copies (safetensors refuses views and tensors sharing memory)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(path), metadata={"format": "pt", **(metadata or {})})


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
