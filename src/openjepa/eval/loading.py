"""Encoders to evaluate: one network of a training checkpoint, or a random-init twin of an encoder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..errors import UserError
from ..models.vit import VisionTransformer
from .features import unwrap_encoder

WHICH = ("target", "context")


@dataclass
class LoadedEncoder:
    """An encoder read from a checkpoint, with what the file says about how it was trained."""

    encoder: VisionTransformer
    which: str  # target (EMA) or context
    path: Path
    run_config: dict[str, Any] | None  # the recorded RunConfig as a plain dict (None: a released checkpoint)
    epoch: int | None
    step: int | None


def checkpoint_file(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the latest checkpoint of a run folder."""
    from ..train.state import LATEST

    path = Path(path)
    if path.is_dir():
        if not (path / LATEST).is_file():
            raise CheckpointError(f"{path} is a folder without {LATEST}; pass a checkpoint file or a run folder")
        return path / LATEST
    return path


def read_encoder(path: str | os.PathLike, which: str = "target") -> LoadedEncoder:
    """Load the ``target`` (EMA; what the paper evaluates) or ``context`` encoder of a checkpoint, in eval mode
    on the CPU.

    An openjepa checkpoint (file or run folder) rebuilds the architecture from its recorded ``config``; a
    released I-JEPA ``.pth.tar`` has none, so its architecture is read off the weights' shapes. Weights load
    strictly (``module.`` prefixes removed); any mismatch is a :class:`CheckpointError` naming the keys.
    """
    from ..interop.official import encoder_from_state, read_checkpoint

    if which not in WHICH:
        raise UserError(f"which encoder: choose 'target' or 'context', not {which!r}")
    file = checkpoint_file(path)
    state, origin = read_checkpoint(file)
    encoder = encoder_from_state(state, origin, which)
    recorded = state.get("config")
    return LoadedEncoder(
        encoder=encoder.eval(),
        which=which,
        path=file,
        run_config=dict(recorded) if isinstance(recorded, dict) else None,
        epoch=_int_or_none(state.get("epoch")),
        step=_int_or_none(state.get("step")),
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def load_encoder(path: str | os.PathLike, which: str = "target") -> VisionTransformer:
    """The ``target`` (default) or ``context`` encoder of a checkpoint file or run folder (see :func:`read_encoder`).

    >>> encoder = load_encoder("runs/digits/jepa-latest.pth.tar")   # doctest: +SKIP
    """
    return read_encoder(path, which).encoder


def random_init_like(encoder: nn.Module, seed: int = 0) -> VisionTransformer:
    """A freshly initialised encoder of the same architecture and initialisation (the "what did pretraining add?"
    baseline: the starting point of training, with another seed).

    Seeded on a forked RNG, so the global generator of the caller is left exactly as it was.
    """
    vit = unwrap_encoder(encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = VisionTransformer(**vit.arch(), norm_eps=vit.norm.eps,
                                  patch_embed_gain=getattr(vit, "patch_embed_gain", None))
    device = next(vit.parameters()).device
    return fresh.to(device).eval()


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA when available, else Apple's MPS, else the CPU; otherwise the named device, checked."""
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but this machine has no usable CUDA GPU; use --device cpu")
    return device
