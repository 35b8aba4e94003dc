"""Encoder and predictor networks with the released I-JEPA parameter layout, and the encoder + linear head
classifier that fine-tuning trains."""

from .classifier import ViTClassifier, set_drop_path
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
    "ViTClassifier",
    "gather_tokens",
    "preset_name",
    "resample_pos_embed",
    "set_drop_path",
    "sincos_2d",
    "vit_base",
    "vit_encoder",
    "vit_giant",
    "vit_huge",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
