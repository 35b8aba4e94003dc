"""Recover an I-JEPA model's architecture from the shapes of its weights.

Everything but the number of attention heads can be read off the tensors:

* width ``D`` and patch size ``p`` and input channels ``C``: ``patch_embed.proj.weight`` is ``[D, C, p, p]``;
* patch grid: ``pos_embed`` is ``[1, H*W, D]`` (a square grid is assumed: all released models are square);
* depth: the number of ``blocks.N`` indices; MLP ratio: ``blocks.0.mlp.fc1.weight`` is ``[ratio*D, D]``;
* predictor width / depth / output size: ``predictor_embed``, ``predictor_blocks.N``, ``predictor_proj``.

Heads only split the width into equal slices, so any divisor of ``D`` gives tensors of the same shapes. They are
taken from the preset of the same width (ViT-H: 16, ViT-g: 16, ...), or ``D / 64`` for a width that no preset
has; pass ``num_heads`` to override. The predictor uses the encoder's head count, as in the released code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .checkpoint import strip_prefix
from .errors import CheckpointError
from .ijepa import ModelConfig
from .models.vit import PRESETS

HEAD_DIM_FALLBACK = 64  # the head width of every ViT preset from ViT-B up


def block_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive ``{prefix}N.`` blocks; a gap in the numbering is an error."""
    indices = set()
    for key in state_dict:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    if not indices:
        return 0
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        raise CheckpointError(f"the weights have no {prefix}{missing[0]}.* entries although later blocks exist")
    return max(indices) + 1


def _require(state_dict: Mapping[str, torch.Tensor], keys: list[str], what: str) -> None:
    absent = [k for k in keys if k not in state_dict]
    if absent:
        sample = ", ".join(list(state_dict)[:5]) or "nothing"
        raise CheckpointError(
            f"these weights are not an I-JEPA {what}: {', '.join(absent)} missing (found {sample}"
            f"{', ...' if len(state_dict) > 5 else ''})"
        )


def heads_for_width(width: int) -> int:
    """Head count of the preset with this width, else ``width / 64``."""
    for arch in PRESETS.values():
        if arch.embed_dim == width:
            return arch.num_heads
    if width % HEAD_DIM_FALLBACK == 0:
        return width // HEAD_DIM_FALLBACK
    raise CheckpointError(
        f"no ViT preset has width {width} and it is not a multiple of {HEAD_DIM_FALLBACK}, so the number of "
        f"attention heads cannot be guessed (it is not recorded in the weights); pass num_heads=..."
    )


def mlp_ratio_for(width: int, hidden: int) -> float:
    """The MLP ratio that rebuilds ``hidden`` units: a preset's exact ratio when one fits (ViT-g's 48/11)."""
    for arch in PRESETS.values():
        if int(width * arch.mlp_ratio) == hidden:
            return arch.mlp_ratio
    return hidden / width


def square_side(num_positions: int, what: str) -> int:
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise CheckpointError(
            f"the {what} position embeddings hold {num_positions} positions, which is not a square grid; only "
            f"square images are supported when the architecture is read from the weights"
        )
    return side


def encoder_arch(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """``VisionTransformer(**encoder_arch(sd))`` rebuilds the encoder that ``sd`` (prefixes allowed) came from."""
    sd = strip_prefix(state_dict)
    _require(sd, ["pos_embed", "patch_embed.proj.weight", "norm.weight"], "encoder")
    width, in_chans, patch, patch_w = sd["patch_embed.proj.weight"].shape
    if patch != patch_w:
        raise CheckpointError(f"the patch embedding has non-square {patch}x{patch_w} patches")
    side = square_side(sd["pos_embed"].shape[1], "encoder")
    depth = block_count(sd, "blocks.")
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * width
    return {
        "img_size": [side * patch, side * patch],
        "patch_size": int(patch),
        "in_chans": int(in_chans),
        "embed_dim": int(width),
        "depth": depth,
        "num_heads": num_heads or heads_for_width(width),
        "mlp_ratio": mlp_ratio_for(width, hidden),
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd if depth else True,
    }


def predictor_arch(state_dict: Mapping[str, torch.Tensor], num_heads: int) -> dict[str, Any]:
    """``VisionTransformerPredictor(**predictor_arch(sd, heads))`` rebuilds the predictor of ``sd``."""
    sd = strip_prefix(state_dict)
    _require(sd, ["predictor_embed.weight", "predictor_pos_embed", "predictor_proj.weight"], "predictor")
    pred_width, width = sd["predictor_embed.weight"].shape
    depth = block_count(sd, "predictor_blocks.")
    side = square_side(sd["predictor_pos_embed"].shape[1], "predictor")
    hidden = sd["predictor_blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * pred_width
    return {
        "grid_size": [side, side],
        "embed_dim": int(width),
        "predictor_embed_dim": int(pred_width),
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio_for(pred_width, hidden),
        "out_dim": int(sd["predictor_proj.weight"].shape[0]),
    }


def _closest_preset(width: int, mlp_ratio: float) -> str:
    """The preset to name in a ModelConfig: same width if any, else the nearest width with the same MLP ratio."""
    same_ratio = [name for name, a in PRESETS.items() if math.isclose(a.mlp_ratio, mlp_ratio)]
    if not same_ratio:
        raise CheckpointError(
            f"the encoder's MLP ratio {mlp_ratio:.4g} matches no ViT preset, and openjepa's model config takes "
            f"the MLP ratio from the preset"
        )
    return min(same_ratio, key=lambda name: abs(PRESETS[name].embed_dim - width))


def model_config_from_weights(
    encoder_sd: Mapping[str, torch.Tensor],
    predictor_sd: Mapping[str, torch.Tensor],
    num_heads: int | None = None,
) -> ModelConfig:
    """The :class:`ModelConfig` of a full I-JEPA model (encoder + predictor), read from its weights."""
    enc = encoder_arch(encoder_sd, num_heads)
    pred = predictor_arch(predictor_sd, enc["num_heads"])
    if pred["embed_dim"] != enc["embed_dim"]:
        raise CheckpointError(
            f"the predictor takes {pred['embed_dim']}-wide inputs but the encoder is {enc['embed_dim']} wide: "
            f"they do not come from the same model"
        )
    if not math.isclose(pred["mlp_ratio"], 4.0):
        raise CheckpointError(f"the predictor's MLP ratio is {pred['mlp_ratio']:.4g}; openjepa's predictor uses 4")
    if not enc["qkv_bias"]:
        raise CheckpointError("the encoder has no query/key/value bias; openjepa's model config always has one")
    preset = _closest_preset(enc["embed_dim"], enc["mlp_ratio"])
    patch_dim = enc["patch_size"] ** 2 * enc["in_chans"]
    target = "pixels" if pred["out_dim"] == patch_dim and pred["out_dim"] != enc["embed_dim"] else "features"
    if target == "features" and pred["out_dim"] != enc["embed_dim"]:
        raise CheckpointError(
            f"the predictor outputs {pred['out_dim']} values per patch: neither the encoder width "
            f"{enc['embed_dim']} (feature targets) nor {patch_dim} (pixel targets)"
        )
    return ModelConfig(
        arch=preset,
        patch_size=enc["patch_size"],
        img_size=enc["img_size"][0],
        in_chans=enc["in_chans"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        pred_depth=pred["depth"],
        pred_emb_dim=pred["predictor_embed_dim"],
        target=target,
    )
