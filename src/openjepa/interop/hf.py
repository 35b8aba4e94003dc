"""Hugging Face transformers' ``IJepaModel``: export a folder it loads offline, and read such folders back.

Key layouts (``N`` = block index), ours -> transformers v5 | v4::

    patch_embed.proj    -> embeddings.patch_embeddings.projection (both)
    pos_embed           -> embeddings.position_embeddings (both)
    blocks.N.norm1      -> layers.N.layernorm_before     | encoder.layer.N.layernorm_before
    blocks.N.attn.qkv   -> layers.N.attention.{q,k,v}_proj | encoder.layer.N.attention.attention.{query,key,value}
    blocks.N.attn.proj  -> layers.N.attention.o_proj     | encoder.layer.N.attention.output.dense
    blocks.N.norm2      -> layers.N.layernorm_after      | encoder.layer.N.layernorm_after
    blocks.N.mlp.fc1    -> layers.N.mlp.fc1              | encoder.layer.N.intermediate.dense
    blocks.N.mlp.fc2    -> layers.N.mlp.fc2              | encoder.layer.N.output.dense
    norm                -> layernorm (both)

The fused ``qkv`` projection is split into equal query, key and value thirds (and concatenated back on import).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..arch_from_weights import block_count, mlp_ratio_for
from ..checkpoint import load_checkpoint, load_safetensors, load_strict
from ..errors import CheckpointError, UserError
from ..models.vit import VisionTransformer
from ..pretrained import build_for_loading
from .export_files import read_json, write_export, write_json
from .export_source import ExportSource, float32_state, resolve_encoder
from .provenance import ExportInfo, model_card

LAYOUTS = ("v5", "v4")
BLOCK_ROOT = {"v5": "layers.", "v4": "encoder.layer."}
BLOCK_RENAMES = {  # ours -> (v5, v4)
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
}
QKV_NAMES = {
    "v5": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    "v4": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
}
TOP_LEVEL = {
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "pos_embed": "embeddings.position_embeddings",
    "norm": "layernorm",
}
# Present in some hub folders but not part of the encoder: the optional pooler, a classification head, the mask
# token of masked-image modelling.
IGNORED = re.compile(r"^(pooler\.|classifier\.|embeddings\.mask_token$)")
HF_DEFAULT_LAYER_NORM_EPS = 1e-12  # IJepaConfig's default, when a config.json leaves it out
BICUBIC = 3  # PIL's code, as image processors record it
SPDX_CASE = {"apache-2.0": "Apache-2.0", "cc-by-nc-4.0": "CC-BY-NC-4.0", "mit": "MIT"}  # hub ids are lower-case


def _top_level(ours: str) -> str | None:
    for src, dst in TOP_LEVEL.items():
        if ours == src or ours.startswith(src + "."):
            return dst + ours[len(src):]
    return None


def to_hf_state_dict(
    encoder: VisionTransformer | Mapping[str, torch.Tensor], layout: str = "v5"
) -> dict[str, torch.Tensor]:
    """Our encoder (or its state dict) in the ``IJepaModel`` key layout ``v5`` (current) or ``v4``."""
    if layout not in LAYOUTS:
        raise UserError(f"transformers layout must be one of {LAYOUTS}, not {layout!r}")
    sd = encoder.state_dict() if isinstance(encoder, VisionTransformer) else dict(encoder)
    out: dict[str, torch.Tensor] = {}
    col = LAYOUTS.index(layout)
    for key, value in sd.items():
        mapped = _top_level(key)
        if mapped is not None:
            out[mapped] = value
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None:
            raise CheckpointError(f"{key} is not a parameter of an I-JEPA encoder")
        index, module, kind = match.groups()
        prefix = f"{BLOCK_ROOT[layout]}{index}."
        if module == "attn.qkv":
            for name, part in zip(QKV_NAMES[layout], value.chunk(3)):
                out[f"{prefix}{name}.{kind}"] = part
        elif module in BLOCK_RENAMES:
            out[f"{prefix}{BLOCK_RENAMES[module][col]}.{kind}"] = value
        else:
            raise CheckpointError(f"{key} is not a parameter of an I-JEPA encoder")
    return out


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``v5`` or ``v4``, from the block key names."""
    if any(k.startswith("layers.") for k in state_dict):
        return "v5"
    if any(k.startswith("encoder.layer.") for k in state_dict):
        return "v4"
    if not any(k.startswith("embeddings.") for k in state_dict):
        raise CheckpointError("these weights are not a transformers IJepaModel (no 'embeddings.*' keys)")
    return "v5"  # no blocks at all: either layout reads the same


def from_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``IJepaModel`` state dict (either layout; ``ijepa.`` prefix of task models allowed) in our key names.
    Pooler, classifier and mask-token weights are dropped; anything else unknown is kept, so that loading it
    reports it."""
    sd = {k.removeprefix("ijepa."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not IGNORED.match(k)}
    layout = detect_layout(sd)
    col = LAYOUTS.index(layout)
    out = {}
    for ours, theirs in TOP_LEVEL.items():
        for suffix in ("", ".weight", ".bias"):
            if theirs + suffix in sd:
                out[ours + suffix] = sd.pop(theirs + suffix)
    for i in range(block_count(sd, BLOCK_ROOT[layout])):
        prefix = f"{BLOCK_ROOT[layout]}{i}."
        for module, names in BLOCK_RENAMES.items():
            for kind in ("weight", "bias"):
                if f"{prefix}{names[col]}.{kind}" in sd:
                    out[f"blocks.{i}.{module}.{kind}"] = sd.pop(f"{prefix}{names[col]}.{kind}")
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{name}.{kind}" for name in QKV_NAMES[layout]]
            if all(p in sd for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd.pop(p) for p in parts])
    out.update(sd)  # leftovers: reported as unexpected keys when loaded
    return out


@functools.lru_cache(maxsize=1)
def installed_layout() -> str:
    """The layout the installed transformers builds (``v5`` when transformers is not installed)."""
    try:
        from transformers import IJepaConfig, IJepaModel
    except ImportError:
        return "v5"
    tiny = IJepaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                       image_size=4, patch_size=2)
    return detect_layout(IJepaModel(tiny).state_dict())


def hf_config(encoder: VisionTransformer) -> dict[str, Any]:
    """``config.json`` for ``IJepaModel`` describing ``encoder`` (LayerNorm eps 1e-6, exact GELU, no dropout)."""
    height, width = encoder.patch_embed.img_size
    return {
        "architectures": ["IJepaModel"],
        "model_type": "ijepa",
        "hidden_size": encoder.embed_dim,
        "num_hidden_layers": encoder.depth,
        "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.blocks[0].mlp.fc1.out_features if encoder.depth else 4 * encoder.embed_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": encoder.norm.eps,
        "image_size": height if height == width else [height, width],
        "patch_size": encoder.patch_size,
        "num_channels": encoder.in_chans,
        "qkv_bias": encoder.arch()["qkv_bias"],
    }


def preprocessor_config(encoder: VisionTransformer, info: ExportInfo) -> dict[str, Any]:
    """An image-processor config (``ViTImageProcessor``): resize to the training size (bicubic), scale to 0..1,
    normalise with the training statistics."""
    height, width = encoder.patch_embed.img_size
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(info.mean),
        "image_std": list(info.std),
    }


HF_USAGE = """from transformers import AutoImageProcessor, IJepaModel
processor = AutoImageProcessor.from_pretrained("THIS_FOLDER")
model = IJepaModel.from_pretrained("THIS_FOLDER")
features = model(**processor(images, return_tensors="pt")).last_hidden_state  # [B, patches, width]"""


def export_hf(
    source: ExportSource,
    out_dir: str | os.PathLike,
    which: str = "target",
    info: ExportInfo | None = None,
    img_size: int | None = None,
    layout: str = "auto",
) -> Path:
    """Write a folder that ``transformers.IJepaModel.from_pretrained`` loads offline: ``config.json``,
    ``model.safetensors`` (in the installed transformers' key layout unless ``layout`` is ``v4``/``v5``),
    ``preprocessor_config.json`` (the training normalisation; left out, with a warning, when it is unknown) and a
    ``README.md`` stating the licence."""
    encoder, info = resolve_encoder(source, which, img_size, info)
    layout = installed_layout() if layout == "auto" else layout
    out = write_export(out_dir, to_hf_state_dict(float32_state(encoder), layout), hf_config(encoder))
    if info.mean is not None:
        write_json(preprocessor_config(encoder, info), out / "preprocessor_config.json")
    else:
        warnings.warn("normalisation unknown: no preprocessor_config.json written", stacklevel=2)
    (out / "README.md").write_text(model_card(info, "transformers", HF_USAGE))
    return out


# -- import --------------------------------------------------------------------------------------------------------
def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of a transformers folder: ``model.safetensors``, a sharded safetensors index, or (loaded
    with ``weights_only=True``) ``pytorch_model.bin``."""
    if (directory / "model.safetensors").is_file():
        return load_safetensors(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index, "a safetensors index").get("weight_map", {}).values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(load_safetensors(directory / shard))
        return weights
    if (directory / "pytorch_model.bin").is_file():
        return load_checkpoint(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _int_size(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise CheckpointError(f"config.json {what} must be an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def arch_from_hf_config(config: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """``VisionTransformer`` arguments from an ``IJepaConfig`` dict."""
    if config.get("model_type") != "ijepa":
        raise CheckpointError(
            f"{origin} describes a {config.get('model_type')!r} model, not an I-JEPA one (model_type 'ijepa')"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{origin} uses activation {config['hidden_act']!r}; I-JEPA encoders use exact GELU")
    patch, patch_w = _int_size(config.get("patch_size", 16), "patch_size")
    if patch != patch_w:
        raise CheckpointError(f"{origin} has non-square {patch}x{patch_w} patches")
    width = int(config.get("hidden_size", 768))
    return {
        "img_size": _int_size(config.get("image_size", 224), "image_size"),
        "patch_size": patch,
        "in_chans": int(config.get("num_channels", 3)),
        "embed_dim": width,
        "depth": int(config.get("num_hidden_layers", 12)),
        "num_heads": int(config.get("num_attention_heads", 12)),
        "mlp_ratio": mlp_ratio_for(width, int(config.get("intermediate_size", 4 * width))),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "norm_eps": float(config.get("layer_norm_eps", HF_DEFAULT_LAYER_NORM_EPS)),
    }


def read_hf_folder(path: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """A transformers folder's path, the ``VisionTransformer`` arguments of its encoder (from ``config.json``) and
    its weights as stored (any task model's: ``IJepaModel``, ``IJepaForImageClassification``)."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder: pass the folder holding config.json and the weights")
    arch = arch_from_hf_config(read_json(directory / "config.json", "a transformers model"), str(directory))
    return directory, arch, read_hf_weights(directory)


def load_hf(path: str | os.PathLike) -> VisionTransformer:
    """Our encoder from a transformers ``IJepaModel`` folder (``config.json`` + weights, either key layout), in
    eval mode. Its outputs equal ``IJepaModel(...).last_hidden_state``."""
    directory, arch, weights = read_hf_folder(path)
    encoder = build_for_loading(lambda: encoder_for(arch, directory))
    load_strict(encoder, from_hf_state_dict(weights), "encoder", str(directory), assign=True)
    return encoder.eval()


def encoder_for(arch: Mapping[str, Any], directory: Path) -> VisionTransformer:
    """The encoder a model folder's ``config.json`` describes, or a :class:`CheckpointError` saying it is invalid."""
    try:
        return VisionTransformer(**arch)
    except ValueError as exc:
        raise CheckpointError(f"{directory / 'config.json'} describes an invalid model: {exc}") from exc


def read_hf_info(path: str | os.PathLike) -> ExportInfo:
    """Normalisation (``preprocessor_config.json``) and licence (``README.md`` metadata) of a transformers folder;
    fields it does not state stay ``None``."""
    directory = Path(path)
    info = ExportInfo(license=None, source="huggingface")
    processor = directory / "preprocessor_config.json"
    if processor.is_file():
        config = read_json(processor, "an image-processor config")
        if config.get("do_normalize", True) and config.get("image_mean") is not None:
            info.mean, info.std = list(config["image_mean"]), list(config["image_std"])
    readme = directory / "README.md"
    if readme.is_file():
        header = re.match(r"---\n(.*?)\n---", readme.read_text(errors="replace"), re.S)
        found = re.search(r"^license:\s*(\S+)", header.group(1), re.M) if header else None
        info.license = SPDX_CASE.get(found.group(1), found.group(1)) if found else None
    return info
