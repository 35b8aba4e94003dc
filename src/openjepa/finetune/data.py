"""The labelled data of a fine-tuning run: the training split, optionally reduced to a low-shot draw, cut into the
images trained on and the images held out to choose the model; and the test split, scored once at the end.

Training views are made by the pretraining data path (:class:`~openjepa.data.PretrainDataset` under a
:class:`~openjepa.data.KeyedBatchSampler`): each crop and flip depends only on ``(seed, epoch, index)`` and the
batch order only on ``(seed, epoch)``, so a resumed run sees exactly the batches of an uninterrupted one, whatever
the number of worker processes. With ``finetune.augment: false`` every view is the deterministic evaluation view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.bad_files import BadFileTracker
from ..data.base import ImageSource, SubsetSource
from ..data.datasets import EvalDataset, PretrainDataset
from ..data.loader import auto_num_workers, folder_of, keyed_loader, normalisation, wants_pinned
from ..data.sampler import KeyedBatchSampler
from ..data.sources import build_source, limit_samples
from ..data.stats import adapt_stats
from ..data.transforms import EvalTransform, TrainTransform
from ..errors import DataError
from ..eval.subsets import low_shot_subset, stratified_split
from .config import FinetuneConfig


@dataclass
class Splits:
    """Which training images are trained on and which are held out (positions in the training split)."""

    train: np.ndarray  # sorted indices of the images trained on
    holdout: np.ndarray  # sorted indices of the images held out to choose the model
    low_shot: np.ndarray | None = None  # the labelled subset both come from (None: the whole training split)
    classes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"train": self.train.tolist(), "holdout": self.holdout.tolist(),
                "low_shot": None if self.low_shot is None else self.low_shot.tolist(), "classes": list(self.classes)}


def choose_splits(labels: np.ndarray, cfg: FinetuneConfig) -> Splits:
    """The low-shot draw (``finetune.labels_per_class`` / ``label_fraction``, seeded with ``finetune.draw_seed``)
    and, inside it, a stratified held-out part of ``finetune.holdout`` (seeded with ``train.seed``)."""
    labels_t = torch.as_tensor(labels).long()
    if bool((labels_t < 0).any()):
        raise DataError("fine-tuning needs a labelled training split: some images have no class (a folder needs one "
                        "sub-folder per class)")
    if len(torch.unique(labels_t)) < 2:
        raise DataError("the training split holds a single class; a classifier needs at least two")
    f = cfg.finetune
    pool = torch.arange(len(labels_t))
    low_shot = None
    if f.labels_per_class is not None or f.label_fraction is not None:
        pool = low_shot_subset(labels_t, f.labels_per_class, f.label_fraction, f.draw_seed)
        low_shot = pool.numpy()
    fit, held = stratified_split(labels_t[pool], f.holdout, cfg.train.seed)
    return Splits(pool[fit].numpy(), pool[held].numpy(), low_shot)


@dataclass
class FinetuneData:
    """Everything the fine-tuning loop reads."""

    loader: DataLoader  # training batches: (images, labels, keys)
    batch_sampler: KeyedBatchSampler
    train_eval: EvalDataset  # the training images, evaluation view (the head's linear-probe initialisation)
    holdout: EvalDataset
    test: EvalDataset | None  # None: the dataset has no test split
    splits: Splits
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bad_files: BadFileTracker
    steps_per_epoch: int

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.set_start_step(start_step)


class _EvalView:
    """The deterministic evaluation view as a training transform (``finetune.augment: false``)."""

    def __init__(self, transform: EvalTransform):
        self.transform = transform

    def __call__(self, picture, generator: torch.Generator) -> torch.Tensor:
        return self.transform(picture)


def collate_labelled(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, label, key)`` samples -> ``(images [B, C, H, W], labels [B])``."""
    return torch.stack([s[0] for s in samples]), torch.tensor([int(s[1]) for s in samples], dtype=torch.long)


def _test_source(cfg: FinetuneConfig) -> ImageSource | None:
    try:
        return build_source(cfg.data, "test")
    except DataError as exc:
        if "no test split" in str(exc):
            return None
        raise


def build_finetune_data(cfg: FinetuneConfig, img_size: int | tuple[int, int], channels: int,
                        stats: tuple[list[float], list[float]] | None, rank: int = 0, world_size: int = 1,
                        bad_file_dir: str | Path | None = None,
                        device: str | torch.device | None = None) -> FinetuneData:
    """The training loader of one rank, the held-out and test datasets. ``stats``: the pretrained encoder's input
    normalisation (used unless ``data.mean`` / ``data.std`` are set; None: the dataset's statistics).
    ``device``: the training device (memory is pinned only for CUDA, and when ``data.pin_memory``)."""
    if channels not in (1, 3):
        raise DataError(f"the encoder takes {channels} input channels; the image loaders make 1 (grey) or 3 (RGB)")
    d = cfg.data
    if d.dataset == "shards":
        raise DataError("fine-tuning draws held-out and low-shot subsets of the training images, which tar shards "
                        "(read in sequence) do not allow: fine-tune on the image folder the shards were made from")
    full = build_source(d, "train")
    source = limit_samples(full, d.max_samples)
    splits = choose_splits(source.labels, cfg)
    splits.classes = tuple(source.classes)
    if d.mean is None and stats is not None:
        mean, std = adapt_stats(tuple(stats[0]), tuple(stats[1]), channels)
    else:
        mean, std = normalisation(d, source, channels)
    num_classes = max(len(source.classes), int(source.labels.max()) + 1)
    global_batch = d.batch_size * world_size
    if len(splits.train) < global_batch:
        raise DataError(f"{len(splits.train)} training images remain after the held-out part, fewer than one "
                        f"global batch (data.batch_size={d.batch_size} x {world_size} process(es)); lower "
                        f"data.batch_size to at most {max(1, len(splits.train) // world_size)}")
    eval_view = EvalTransform(img_size, channels, mean, std, d.eval_crop)
    view = TrainTransform(img_size, channels, mean, std, d.crop_scale, d.crop_ratio, d.hflip) \
        if cfg.finetune.augment else _EvalView(eval_view)
    tracker = BadFileTracker(bad_file_dir, rank, folder_of(full))
    train = PretrainDataset(SubsetSource(source, splits.train), view, cfg.train.seed, tracker)
    workers = d.num_workers if d.num_workers is not None else auto_num_workers(source, world_size)
    loader, sampler = keyed_loader(train, d.batch_size, world_size, rank, cfg.train.seed, collate_labelled, workers,
                                   wants_pinned(d, device))
    holdout = EvalDataset(SubsetSource(source, splits.holdout), eval_view, tracker)
    test_source = _test_source(cfg)
    test = EvalDataset(test_source, eval_view, tracker) if test_source is not None else None
    train_eval = EvalDataset(SubsetSource(source, splits.train), eval_view, tracker)
    return FinetuneData(loader, sampler, train_eval, holdout, test, splits, num_classes, tuple(source.classes),
                        tuple(mean), tuple(std), tracker, len(sampler))
