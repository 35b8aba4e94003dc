"""openjepa's own export format: ``model.safetensors`` (the encoder's weights, our key names) + ``config.json``.

``config.json`` records the architecture (:meth:`VisionTransformer.arch` plus the LayerNorm epsilon), the patch
and image size, the input normalisation used in training, which encoder it is, the licence of the weights,
where they come from and a hash of the training config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoint import load_safetensors, load_strict
from ..errors import CheckpointError
from ..models.vit import VisionTransformer
from ..pretrained import build_for_loading
from ..version import __version__
from .export_files import CONFIG, WEIGHTS, read_json, write_export
from .export_source import ExportSource, float32_state, resolve_encoder
from .provenance import ExportInfo

FORMAT = "openjepa-encoder"
FORMAT_VERSION = 1


def export_config(encoder: VisionTransformer, info: ExportInfo) -> dict[str, Any]:
    """The ``config.json`` of an export."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {**encoder.arch(), "norm_eps": encoder.norm.eps},
        "patch_size": encoder.patch_size,
        "image_size": list(encoder.patch_embed.img_size),
        "mean": info.mean,
        "std": info.std,
        "encoder": info.which,
        "license": info.license,
        "source": info.source,
        "dataset": info.dataset,
        "training_config_sha256": info.config_sha256,
        "openjepa_version": __version__,
    }


def export_openjepa(
    source: ExportSource,
    out_dir: str | os.PathLike,
    which: str = "target",
    info: ExportInfo | None = None,
    img_size: int | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` for one encoder of ``source`` (a checkpoint path, an
    :class:`IJEPA` or a :class:`VisionTransformer`); ``which`` is ``target`` (default) or ``context``."""
    encoder, info = resolve_encoder(source, which, img_size, info)
    return write_export(out_dir, float32_state(encoder), export_config(encoder, info), {"openjepa_format": FORMAT})


def read_export_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of an openjepa export, checked to be one."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder: pass the folder that openjepa export wrote")
    config = read_json(directory / CONFIG, "an openjepa export")
    if config.get("format") != FORMAT:
        hint = " (it looks like a Hugging Face model: use load_hf)" if config.get("model_type") else ""
        raise CheckpointError(f"{directory / CONFIG} does not describe an openjepa export{hint}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer openjepa (export format {config['format_version']}); upgrade openjepa"
        )
    return config


def read_export_info(path: str | os.PathLike) -> ExportInfo:
    """The :class:`ExportInfo` recorded in an export (normalisation, licence, source...)."""
    config = read_export_config(path)
    return ExportInfo(mean=config.get("mean"), std=config.get("std"), license=config.get("license"),
                      source=config.get("source", "openjepa"), which=config.get("encoder", "target"),
                      config_sha256=config.get("training_config_sha256"), dataset=config.get("dataset"))


def load_exported(path: str | os.PathLike) -> VisionTransformer:
    """The encoder of an openjepa export folder, in eval mode (its normalisation: :func:`read_export_info`)."""
    directory = Path(path)
    config = read_export_config(directory)
    try:
        encoder = build_for_loading(lambda: VisionTransformer(**config["architecture"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{directory / CONFIG} has an invalid architecture: {exc}") from exc
    load_strict(encoder, load_safetensors(directory / WEIGHTS), "encoder", str(directory), assign=True)
    return encoder.eval()
