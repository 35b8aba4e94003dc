"""``build_source``: the dataset of a :class:`DataConfig` as an :class:`ImageSource`."""

from __future__ import annotations

import numpy as np

from ..config_sections import DataConfig
from .base import ImageSource, SubsetSource
from .cifar import cifar_source
from .digits import digits_source
from .folder import FolderSource
from .idx import idx_source
from .shards import ShardSource

SUBSET_SEED = 0  # data.max_samples picks the same subset in every run


def build_source(cfg: DataConfig, split: str = "train") -> ImageSource:
    """The ``train`` or ``test`` split of ``cfg.dataset`` read from ``cfg.path`` (or its default location).

    ``data.max_samples`` is not applied here (see :func:`limit_samples`): evaluation keeps whole splits.
    """
    if cfg.dataset == "digits":
        return digits_source(split)
    if cfg.dataset == "folder":
        return FolderSource(cfg.path, split)
    if cfg.dataset == "shards":
        return ShardSource(cfg.path, split)
    if cfg.dataset in ("idx", "mnist", "fashion_mnist"):
        return idx_source(cfg.dataset, cfg.path, split)
    return cifar_source(cfg.dataset, cfg.path, split)


def limit_samples(source: ImageSource, max_samples: int | None) -> ImageSource:
    """A fixed random subset of ``max_samples`` samples (all of them when ``None`` or not fewer)."""
    if max_samples is None or max_samples >= len(source):
        return source
    chosen = np.random.default_rng(SUBSET_SEED).permutation(len(source))[:max_samples]
    return SubsetSource(source, np.sort(chosen))
