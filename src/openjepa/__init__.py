"""openjepa: I-JEPA self-supervised pretraining for Vision Transformers."""

from .data.collate import MaskCollator
from .ijepa import IJEPA, ModelConfig, build_ijepa
from .interop import load_official
from .masks import BlockMasks, MaskConfig, MultiBlockMaskSampler, RandomMaskSampler, build_mask_sampler
from .models import VisionTransformer, VisionTransformerPredictor, vit_encoder
from .schedules import Schedules
from .version import __version__

__all__ = [
    "IJEPA",
    "BlockMasks",
    "MaskCollator",
    "MaskConfig",
    "ModelConfig",
    "MultiBlockMaskSampler",
    "RandomMaskSampler",
    "Schedules",
    "VisionTransformer",
    "VisionTransformerPredictor",
    "__version__",
    "build_ijepa",
    "build_mask_sampler",
    "load_official",
    "vit_encoder",
]
