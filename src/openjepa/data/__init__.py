"""Datasets, transforms and loaders for I-JEPA pretraining and evaluation (Pillow + numpy + torch only).

``build_pretrain_loader`` gives the trainer keyed, deterministic, masked batches; ``build_eval_dataset`` gives
evaluation code ``(image, label)`` samples; ``build_source`` reads any supported dataset split.
"""

from ..config_sections import DATASETS, DataConfig
from .bad_files import BadFile, BadFileTracker
from .base import ArraySource, ImageSource, SubsetSource
from .collate import MaskCollator, MaskedBatch
from .datasets import EvalDataset, PretrainDataset
from .images import IMAGE_EXTENSIONS, UnreadableImage, to_standard_mode
from .loader import PretrainData, auto_num_workers, build_eval_dataset, build_pretrain_loader
from .sampler import KeyedBatchSampler, SampleKey
from .sources import build_source, limit_samples
from .stats import IMAGENET_MEAN, IMAGENET_STD, pixel_stats
from .transforms import EvalTransform, TrainTransform, random_resized_crop_box

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "BadFile",
    "BadFileTracker",
    "DataConfig",
    "EvalDataset",
    "EvalTransform",
    "ImageSource",
    "KeyedBatchSampler",
    "MaskCollator",
    "MaskedBatch",
    "PretrainData",
    "PretrainDataset",
    "SampleKey",
    "SubsetSource",
    "TrainTransform",
    "UnreadableImage",
    "auto_num_workers",
    "build_eval_dataset",
    "build_pretrain_loader",
    "build_source",
    "limit_samples",
    "pixel_stats",
    "random_resized_crop_box",
    "to_standard_mode",
]
