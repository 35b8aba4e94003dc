"""timm's ``VisionTransformer``: export the encoder in its ``vit_*`` layout, with the arguments that rebuild it.

timm names the encoder's tensors as the released I-JEPA code does (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), so the weights pass unchanged once
timm is told to build the same network:

* ``class_token=False``: I-JEPA has no CLS token, so ``pos_embed`` is ``[1, patches, D]`` (``no_embed_class``
  only matters when there is a class token, and is left at its default);
* ``global_pool="avg"`` with ``fc_norm=False``: the final ``norm`` is applied to every token and the pooled
  feature is the mean of the normed tokens, as in I-JEPA's evaluations (``fc_norm=True`` would instead normalise
  after pooling, a different network);
* ``dynamic_img_size=True``: other resolutions work, the position embeddings resampled on the fly;
* ``num_classes=0``: no head, the model returns features.

timm is not a dependency of openjepa: the folder is written without it and loads into it with ::

    import json, timm
    from safetensors.torch import load_file
    cfg = json.load(open("out/config.json"))
    model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
    model.load_state_dict(load_file("out/model.safetensors"))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, load_safetensors, load_strict, strip_prefix
from ..errors import CheckpointError
from ..models.layers import LAYER_NORM_EPS
from ..models.vit import PRESETS, VisionTransformer
from ..pretrained import build_for_loading
from .export_files import read_json, write_export
from .export_source import ExportSource, float32_state, resolve_encoder
from .provenance import ExportInfo, model_card

# timm models registered with exactly the I-JEPA encoder's structure (no class token, average pool, per-token
# final norm), keyed by (preset, patch size, image size). Any other architecture uses GENERIC_NAME: the
# model_args written next to it override every architectural setting, so the name only picks timm's defaults.
TIMM_NAMES = {
    ("vit_base", 16, 224): "vit_base_patch16_gap_224",
    ("vit_huge", 14, 224): "vit_huge_patch14_gap_224",
    ("vit_huge", 16, 448): "vit_huge_patch16_gap_448",
    ("vit_giant", 16, 224): "vit_giant_patch16_gap_224",
}
GENERIC_NAME = "vit_base_patch16_gap_224"
TIMM_LAYER_NORM_EPS = 1e-6  # timm's ViT default, and ours
BLOCK_TENSORS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def timm_key(ours: str) -> str:
    """timm's name of one of our encoder's tensors (they coincide; checked rather than assumed)."""
    head, _, rest = ours.partition(".")
    if ours == "pos_embed" or head in ("patch_embed", "norm"):
        return ours
    parts = ours.split(".")
    if head == "blocks" and parts[1].isdigit() and ".".join(parts[2:-1]) in BLOCK_TENSORS:
        return ours
    raise CheckpointError(f"{ours} has no counterpart in timm's VisionTransformer")


def to_timm_state_dict(encoder: VisionTransformer | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder's weights in timm's ``vit_*`` layout."""
    sd = encoder.state_dict() if isinstance(encoder, VisionTransformer) else dict(encoder)
    return {timm_key(k): v for k, v in sd.items()}


def from_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT state dict in our names. Refuses models whose structure differs from I-JEPA's (class or
    register tokens, norm after pooling); drops a classification head."""
    sd = strip_prefix(state_dict)
    extra = [k for k in ("cls_token", "reg_token") if k in sd]
    if extra:
        raise CheckpointError(f"this timm model has {' and '.join(extra)}; an I-JEPA encoder has no prefix tokens")
    if "fc_norm.weight" in sd:
        raise CheckpointError("this timm model normalises after pooling (fc_norm); I-JEPA normalises every token")
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def timm_name(arch: Mapping[str, Any]) -> str:
    """The timm model name to create for an architecture (``VisionTransformer.arch()``; see :data:`TIMM_NAMES`)."""
    preset = next((name for name, a in PRESETS.items()
                   if (a.embed_dim, a.depth, a.num_heads, a.mlp_ratio)
                   == (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["mlp_ratio"])), None)
    height, width = arch["img_size"]
    key = (preset, arch["patch_size"], height)
    return TIMM_NAMES.get(key, GENERIC_NAME) if height == width else GENERIC_NAME


def timm_model_args(encoder: VisionTransformer) -> dict[str, Any]:
    """Keyword arguments of ``timm.create_model`` that build exactly this encoder."""
    arch = encoder.arch()
    height, width = arch["img_size"]
    return {
        "img_size": height if height == width else [height, width],
        "patch_size": arch["patch_size"],
        "in_chans": arch["in_chans"],
        "embed_dim": arch["embed_dim"],
        "depth": arch["depth"],
        "num_heads": arch["num_heads"],
        "mlp_ratio": arch["mlp_ratio"],
        "qkv_bias": arch["qkv_bias"],
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,
        "dynamic_img_size": True,
        "num_classes": 0,
    }


def timm_config(encoder: VisionTransformer, info: ExportInfo) -> dict[str, Any]:
    """``config.json`` in timm's hub format (``architecture``, ``model_args``, ``pretrained_cfg``), plus an
    ``openjepa`` section recording the provenance."""
    height, width = encoder.patch_embed.img_size
    pretrained_cfg: dict[str, Any] = {
        "input_size": [encoder.in_chans, height, width],
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "num_classes": 0,
        "license": info.license.lower() if info.license else None,
    }
    if info.mean is not None:
        pretrained_cfg.update(mean=list(info.mean), std=list(info.std))
    return {
        "architecture": timm_name(encoder.arch()),
        "num_classes": 0,
        "num_features": encoder.embed_dim,
        "global_pool": "avg",
        "model_args": timm_model_args(encoder),
        "pretrained_cfg": pretrained_cfg,
        "openjepa": {"encoder": info.which, "source": info.source, "dataset": info.dataset,
                     "training_config_sha256": info.config_sha256},
    }


TIMM_USAGE = """import json, timm
from safetensors.torch import load_file
cfg = json.load(open("THIS_FOLDER/config.json"))
model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
model.load_state_dict(load_file("THIS_FOLDER/model.safetensors"))
tokens = model.forward_features(images)  # [B, patches, width]; model(images) gives their mean"""


def export_timm(
    source: ExportSource,
    out_dir: str | os.PathLike,
    which: str = "target",
    info: ExportInfo | None = None,
    img_size: int | None = None,
) -> Path:
    """Write ``model.safetensors`` (timm layout), ``config.json`` (model name and arguments) and a README."""
    encoder, info = resolve_encoder(source, which, img_size, info)
    if encoder.norm.eps != TIMM_LAYER_NORM_EPS:
        warnings.warn(f"the encoder's LayerNorm epsilon is {encoder.norm.eps:g}; timm's ViT uses "
                      f"{TIMM_LAYER_NORM_EPS:g} (outputs will differ slightly)", stacklevel=2)
    if info.mean is None:
        warnings.warn("normalisation unknown: config.json records no mean/std", stacklevel=2)
    out = write_export(out_dir, to_timm_state_dict(float32_state(encoder)), timm_config(encoder, info))
    (out / "README.md").write_text(model_card(info, "timm", TIMM_USAGE))
    return out


def read_timm_folder(path: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """A timm ViT folder's path, its ``model_args`` (checked to describe the I-JEPA structure: no class token, no
    norm after pooling) and its weights as stored (a classifier's head included)."""
    directory = Path(path)
    config = read_json(directory / "config.json", "a timm model folder")
    args = config.get("model_args")
    if not isinstance(args, Mapping):
        raise CheckpointError(f"{directory / 'config.json'} has no model_args describing the architecture")
    if args.get("class_token", True) or args.get("fc_norm", False):
        raise CheckpointError(f"{directory} is a timm ViT with a class token or post-pooling norm, not an I-JEPA "
                              f"encoder (class_token=False, fc_norm=False)")
    weights_file = directory / "model.safetensors"
    weights = load_safetensors(weights_file) if weights_file.is_file() else load_checkpoint(
        directory / "pytorch_model.bin")
    return directory, dict(args), weights


def timm_arch(args: Mapping[str, Any]) -> dict[str, Any]:
    """``VisionTransformer`` arguments from timm's ``model_args``."""
    arch = {k: args[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                 "mlp_ratio", "qkv_bias") if k in args}
    return {**arch, "norm_eps": LAYER_NORM_EPS}


def load_timm(path: str | os.PathLike) -> VisionTransformer:
    """Our encoder from a folder written by :func:`export_timm` (or any timm ViT folder of the same structure
    whose ``config.json`` has ``model_args``)."""
    directory, args, weights = read_timm_folder(path)
    encoder = build_for_loading(lambda: VisionTransformer(**timm_arch(args)))
    load_strict(encoder, from_timm_state_dict(weights), "encoder", str(directory), assign=True)
    return encoder.eval()
