"""Encoder and predictor networks with the released I-JEPA parameter layout."""

from .layers import Attention, Block, DropPath, Mlp, PatchEmbed, gather_tokens
from .pos_embed import resample_pos_embed, sincos_2d
from .predictor import VisionTransformerPredictor
from .vit import (
    PRESETS,
    VisionTransformer,
    ViTArch,
    preset_name,
    vit_base,
    vit_encoder,
    vit_giant,
    vit_huge,
    vit_large,
    vit_small,
    vit_tiny,
)

__all__ = [
    "PRESETS",
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "ViTArch",
    "VisionTransformer",
    "VisionTransformerPredictor",
    "gather_tokens",
    "preset_name",
    "resample_pos_embed",
    "sincos_2d",
    "vit_base",
    "vit_encoder",
    "vit_giant",
    "vit_huge",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
