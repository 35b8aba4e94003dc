"""openjepa: I-JEPA self-supervised pretraining for Vision Transformers."""

__version__ = "0.1.0"  # before the imports: modules that record it in their files import it from here

from .ijepa import IJEPA, ModelConfig, build_ijepa
from .interop import load_official
from .masks import BlockMasks, MaskCollator, MaskConfig, MultiBlockMaskSampler, RandomMaskSampler, build_mask_sampler
from .models import VisionTransformer, VisionTransformerPredictor, vit_encoder
from .schedules import Schedules

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
