"""The pretraining loader and the evaluation datasets of a run's data, model and mask settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config_sections import DataConfig
from ..errors import DataError
from ..ijepa import ModelConfig
from ..masks import MaskConfig, build_mask_sampler
from ..models.pos_embed import to_2tuple
from .bad_files import BadFileTracker
from .base import ImageSource, SubsetSource
from .collate import MaskCollator
from .datasets import EvalDataset, PretrainDataset
from .sampler import KeyedBatchSampler
from .shards import ShardStream
from .sources import build_source, limit_samples
from .stats import Stats, adapt_stats
from .transforms import EvalTransform, TrainTransform

MAX_AUTO_WORKERS = 8


@dataclass
class PretrainData:
    """Everything the trainer needs from the data side of a run."""

    loader: DataLoader  # yields openjepa.data.collate.MaskedBatch: accum_steps micro-batches per step
    batch_sampler: KeyedBatchSampler  # for shards: the ShardStream (same set_epoch / set_start_step / len)
    dataset: PretrainDataset
    steps_per_epoch: int
    bad_files: BadFileTracker
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_workers: int
    accum_steps: int = 1  # micro-batches per step (gradient accumulation)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Prepare the loader for ``epoch``, starting at batch ``start_step`` (resuming)."""
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.set_start_step(start_step)

    def bad_file_count(self) -> int:
        """Distinct unreadable files met so far (in every worker); ``bad_files.summary()`` lists them."""
        return self.bad_files.count


def check_channels(model_cfg: ModelConfig) -> int:
    if model_cfg.in_chans not in (1, 3):
        raise DataError(f"model.in_chans={model_cfg.in_chans} is not supported by the image loaders; use 1 (grey) "
                        f"or 3 (RGB)")
    return model_cfg.in_chans


def normalisation(data_cfg: DataConfig, source: ImageSource, channels: int) -> Stats:
    """``data.mean``/``data.std`` when set (one value: every channel), else the source's statistics."""
    if data_cfg.mean is not None:
        mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)
        if len(mean) not in (1, channels):
            raise DataError(f"data.mean/data.std have {len(mean)} values but the model has {channels} input "
                            f"channel(s); give {channels} values (or 1, used for every channel)")
        return adapt_stats(mean, std, channels)
    return adapt_stats(*source.stats, channels)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_num_workers(source: ImageSource, world_size: int = 1) -> int:
    """Worker processes for ``data.num_workers=null``.

    In-memory datasets (digits, IDX, CIFAR) load in the main process: a sample costs tens of microseconds there,
    less than shipping it back from a worker (see benchmarks/data_throughput.py). Files need decoding: one core
    per rank is left to the training loop, the rest (at most 8) decode. The cores are shared by the ranks of this
    machine: torchrun's ``LOCAL_WORLD_SIZE`` of them when it is set, else ``world_size``.
    """
    if source.in_memory:
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    per_rank = max(1, available_cpus() // max(1, local))
    return max(1, min(MAX_AUTO_WORKERS, per_rank - 1))


def _patch_grid(model_cfg: ModelConfig) -> tuple[int, int]:
    height, width = to_2tuple(model_cfg.img_size)
    p = model_cfg.patch_size
    if height % p or width % p:
        raise DataError(f"model.img_size {model_cfg.img_size} is not divisible by model.patch_size {p}")
    return height // p, width // p


def wants_pinned(data_cfg: DataConfig, device: str | torch.device | None) -> bool:
    if not data_cfg.pin_memory or not torch.cuda.is_available():
        return False
    return device is None or torch.device(device).type == "cuda"


def build_pretrain_loader(data_cfg: DataConfig, model_cfg: ModelConfig, mask_cfg: MaskConfig, seed: int,
                          rank: int = 0, world_size: int = 1, *, bad_file_dir: str | Path | None = None,
                          device: str | torch.device | None = None, accum_steps: int = 1) -> PretrainData:
    """The training data of one rank: keyed batches, deterministic views and masks, bad files replaced.

    ``bad_file_dir``: where unreadable-file records go (e.g. the run folder; default: a temporary folder).
    ``device``: the training device; memory is pinned only for CUDA (and when ``data.pin_memory``).
    ``accum_steps``: micro-batches of ``data.batch_size`` per rank and step (gradient accumulation): the loader
    then yields that many batches per step, which together with the other ranks' make up the step's global batch
    (see :class:`~openjepa.data.sampler.KeyedBatchSampler`).
    """
    channels = check_channels(model_cfg)
    grid = _patch_grid(model_cfg)
    full = build_source(data_cfg, "train")
    source = limit_samples(full, data_cfg.max_samples)
    global_batch = data_cfg.batch_size * world_size * accum_steps
    if len(source) < global_batch:
        accumulated = f" x {accum_steps} accumulated micro-batches" if accum_steps > 1 else ""
        raise DataError(
            f"the {source.name} training split has {len(source)} images, fewer than one global batch "
            f"(data.batch_size={data_cfg.batch_size} x {world_size} process(es){accumulated} = {global_batch}); "
            + (f"lower data.global_batch (or optim.accum_steps) so that at most {len(source)} images make a step"
               if accum_steps > 1 else f"lower data.batch_size to at most {max(1, len(source) // world_size)}")
            + (" or raise data.max_samples" if len(source) < len(full) else " or add images")
        )
    mean, std = normalisation(data_cfg, source, channels)
    transform = TrainTransform(model_cfg.img_size, channels, mean, std, data_cfg.crop_scale, data_cfg.crop_ratio,
                               data_cfg.hflip)
    tracker = BadFileTracker(bad_file_dir, rank, folder_of(source))
    dataset = PretrainDataset(source, transform, seed, tracker)
    collate = MaskCollator(build_mask_sampler(grid, mask_cfg), seed)
    workers = data_cfg.num_workers if data_cfg.num_workers is not None else auto_num_workers(source, world_size)
    if data_cfg.dataset == "shards":
        return _shard_loader(dataset, data_cfg, collate, workers, world_size, rank, seed,
                             wants_pinned(data_cfg, device), mean, std, accum_steps)
    loader, sampler = keyed_loader(dataset, data_cfg.batch_size, world_size, rank, seed, collate, workers,
                                   wants_pinned(data_cfg, device), accum_steps)
    return PretrainData(loader, sampler, dataset, sampler.steps_per_epoch, tracker, mean, std, workers, accum_steps)


def keyed_loader(dataset: PretrainDataset, batch_size: int, world_size: int, rank: int, seed: int,
                 collate: Callable, workers: int, pin_memory: bool,
                 accum_steps: int = 1) -> tuple[DataLoader, KeyedBatchSampler]:
    """The loader of one rank's keyed batches of ``dataset`` (pretraining's and fine-tuning's), and its sampler:
    each sample's view depends only on ``(seed, epoch, index)`` and the batch order only on ``(seed, epoch)``;
    ``accum_steps`` micro-batches per step."""
    sampler = KeyedBatchSampler(len(dataset), batch_size, world_size, rank, seed, accum_steps=accum_steps)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        persistent_workers=workers > 0,  # safe: epoch and step travel inside the keys, not in worker state
        pin_memory=pin_memory,
        # Worker seeds are drawn from this generator instead of torch's global one, so creating the loader's
        # iterator leaves the training loop's random stream untouched (resumed runs stay identical).
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def build_eval_dataset(data_cfg: DataConfig, model_cfg: ModelConfig, split: str,
                       bad_file_dir: str | Path | None = None) -> EvalDataset:
    """``(image, label)`` samples of ``split`` (``train`` or ``test``) with the deterministic eval transform.

    The normalisation is the training one (the training split's statistics, or ``data.mean``/``data.std``);
    ``data.max_samples`` is not applied.
    """
    channels = check_channels(model_cfg)
    source = build_source(data_cfg, split)
    mean, std = normalisation(data_cfg, source, channels)
    transform = EvalTransform(model_cfg.img_size, channels, mean, std, data_cfg.eval_crop)
    return EvalDataset(source, transform, BadFileTracker(bad_file_dir, folder=folder_of(source)))


def folder_of(source: ImageSource) -> Path | None:
    """The image folder a source reads (through any subsets), where it has one."""
    while isinstance(source, SubsetSource):
        source = source.source
    return getattr(source, "root", None)


def _shard_loader(dataset: PretrainDataset, data_cfg: DataConfig, collate: MaskCollator, workers: int,
                  world_size: int, rank: int, seed: int, pin_memory: bool, mean: tuple[float, ...],
                  std: tuple[float, ...], accum_steps: int = 1) -> PretrainData:
    """The :class:`PretrainData` of ``data.dataset=shards``: a :class:`~openjepa.data.shards.ShardStream` in place
    of the keyed batch sampler."""
    stream = ShardStream(dataset, data_cfg.batch_size, world_size, rank, seed, data_cfg.shuffle_buffer, accum_steps)
    for problem in stream.shards.problems:  # damaged shards and labels: reported with the unreadable images
        dataset.bad_files.record(problem.path, problem.reason)
    loader = DataLoader(
        stream, batch_size=None, collate_fn=collate, num_workers=workers,
        # Not persistent: the epoch and start step are read when an epoch's workers start (the folder loader's
        # keys travel with each batch request instead, which an iterable dataset has no way to receive).
        persistent_workers=False, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )
    return PretrainData(loader, stream, dataset, stream.steps_per_epoch, dataset.bad_files, mean, std, workers,
                        accum_steps)
