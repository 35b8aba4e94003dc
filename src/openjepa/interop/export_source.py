"""What can be exported: a checkpoint file or run folder (openjepa's or a released one), an IJEPA model or one
encoder; and the :class:`ExportInfo` that goes with it."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UserError
from ..ijepa import IJEPA
from ..models.vit import VisionTransformer
from ..pretrained import ENCODERS, encoder_at, read_encoder
from .provenance import ExportInfo, check_stats, info_from_checkpoint

ExportSource = str | os.PathLike | Mapping[str, Any] | IJEPA | VisionTransformer


def resolve_encoder(
    source: ExportSource, which: str = "target", img_size: int | None = None, info: ExportInfo | None = None
) -> tuple[VisionTransformer, ExportInfo]:
    """The encoder to export and its :class:`ExportInfo`.

    From a checkpoint the info (licence, normalisation, config hash) is read from the file; from a model it is
    ``info`` (default: openjepa licence, normalisation unknown, with a warning).
    """
    if which not in ENCODERS:
        raise UserError(f"which encoder: choose 'target' or 'context', not {which!r}")
    if isinstance(source, VisionTransformer):
        encoder = source
    elif isinstance(source, IJEPA):
        encoder = source.target_encoder if which == "target" else source.encoder
    else:
        loaded = read_encoder(source, which, img_size)
        encoder = loaded.encoder
        if info is None:
            return encoder, info_from_checkpoint(loaded.metadata, which, encoder.in_chans)
        img_size = None  # already built at that size
    if img_size is not None and img_size != encoder.patch_embed.img_size[0]:
        encoder = encoder_at(encoder, img_size)
    if info is None:
        warnings.warn("no input normalisation given (info=ExportInfo(mean=..., std=...)); the export records "
                      "mean/std as null", stacklevel=3)
    info = copy.copy(info) if info is not None else ExportInfo(which=which)
    info.which = which
    check_stats(info.mean, info.std, encoder.in_chans)
    return encoder, info


def float32_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a module (an encoder, a classifier's head) as float32 CPU tensors."""
    return {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
