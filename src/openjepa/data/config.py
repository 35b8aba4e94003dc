"""Data settings of a run."""

from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("digits", "folder", "idx", "mnist", "fashion_mnist", "cifar10", "cifar100")


@dataclass
class DataConfig:
    """Where the images come from and how training views are made.

    ``dataset``: ``digits`` (embedded, scikit-learn's 8x8 digits upscaled), ``folder`` (any directory tree of
    images; labels from first-level sub-folders when there are any), ``idx`` / ``mnist`` / ``fashion_mnist``
    (IDX files, gz or raw), ``cifar10`` / ``cifar100`` (the python batches). All read from local paths only.
    """

    dataset: str = "digits"
    path: str | None = None  # None: the dataset's default location (fashion_mnist: the Debian package's)
    batch_size: int = 64  # per process; the global batch is batch_size * world size
    num_workers: int | None = None  # None: chosen from the dataset and the machine
    crop_scale: tuple[float, float] = (0.3, 1.0)  # RandomResizedCrop area range (the released recipe's)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: bool = False
    mean: tuple[float, ...] | None = None  # None: the dataset's own statistics (ImageNet's for folders)
    std: tuple[float, ...] | None = None
    max_samples: int | None = None  # train on the first N samples only (quick trials)
    pin_memory: bool = True  # only takes effect on CUDA

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
