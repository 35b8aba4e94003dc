"""Data settings of a run."""

from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("digits", "folder", "shards", "idx", "mnist", "fashion_mnist", "cifar10", "cifar100")


@dataclass
class DataConfig:
    """Where the images come from and how training views are made.

    ``dataset``: ``digits`` (embedded, scikit-learn's 8x8 digits upscaled), ``folder`` (any directory tree of
    images; labels from first-level sub-folders when there are any), ``shards`` (tar shards: a folder written by
    ``openjepa make-shards``, or patterns such as ``/data/train-{000..127}.tar``, globs, or a list of those),
    ``idx`` / ``mnist`` / ``fashion_mnist``
    (IDX files, gz or raw), ``cifar10`` / ``cifar100`` (the python batches). All read from local paths only.
    """

    dataset: str = "digits"
    path: str | tuple[str, ...] | None = None  # None: the dataset's default location (fashion_mnist: Debian's)
    batch_size: int = 64  # per process; the global batch is batch_size * world size
    num_workers: int | None = None  # None: chosen from the dataset and the machine
    crop_scale: tuple[float, float] = (0.3, 1.0)  # RandomResizedCrop area range (the released recipe's)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: bool = False
    mean: tuple[float, ...] | None = None  # None: the dataset's own statistics (ImageNet's for folders)
    std: tuple[float, ...] | None = None
    # Train on N samples only (quick trials): a fixed random subset (the same for every seed and run), so that a
    # folder sorted by class does not shrink to its first classes.
    max_samples: int | None = None
    pin_memory: bool = True  # only takes effect on CUDA
    eval_crop: float = 1.0  # evaluation keeps this fraction of the shorter side (0.875: the usual ImageNet crop)
    shuffle_buffer: int = 1000  # shards: samples each loader worker holds to shuffle the order it reads them in

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if isinstance(self.path, (list, tuple)) and self.dataset != "shards":
            raise ValueError(f"data.path is a list, which only data.dataset=shards accepts; give one path for "
                             f"data.dataset={self.dataset}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1 (1: no shuffling), got {self.shuffle_buffer}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for automatic), got {self.num_workers}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.crop_scale must be an increasing pair within (0, 1], got {list(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"data.crop_ratio must be an increasing pair of positive numbers, got "
                             f"{list(self.crop_ratio)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both data.mean and data.std, or neither (to use the dataset's statistics)")
        if self.mean is not None and (len(self.mean) != len(self.std) or not self.mean):
            raise ValueError(f"data.mean and data.std must be non-empty lists of the same length, got "
                             f"{list(self.mean)} and {list(self.std)}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"data.std values must be positive, got {list(self.std)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"data.max_samples must be >= 1 (or null for all), got {self.max_samples}")
        if not 0 < self.eval_crop <= 1:
            raise ValueError(f"data.eval_crop must be within (0, 1], got {self.eval_crop}")
