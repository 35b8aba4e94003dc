"""Batches of ``(index, SampleKey)`` for one rank, resumable mid-epoch; the keys make each sample's masks and crop
a pure function of ``(seed, epoch, step)``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class SampleKey:
    """Where a sample sits in training: it makes masks a pure function of ``(seed, epoch, step)``."""

    epoch: int
    step: int  # batch index within the epoch
    position: int  # row of this sample in the global (all-rank) batch
    global_batch: int




class KeyedBatchSampler:
    """Per-rank batches of ``(index, SampleKey(epoch, step, position, global_batch))``.

    The order is :class:`torch.utils.data.DistributedSampler`'s (also for one process, so a single-process run and
    a multi-process run with the same global batch share one permutation): rank ``r`` of ``world_size`` takes
    every ``world_size``-th index of the epoch's permutation starting at ``r``. Its ``j``-th sample of step ``s``
    therefore sits at ``position = j * world_size + r`` of global batch ``s``, and the union of the ranks' batches
    of step ``s`` is the single-process batch ``s`` of size ``batch_size_per_rank * world_size``. The last,
    incomplete batch is dropped.

    Call :meth:`set_epoch` before each epoch, then :meth:`set_start_step` to resume inside it: the first ``k``
    batches are skipped without loading any image.
    """

    def __init__(self, dataset_len: int, batch_size_per_rank: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        if batch_size_per_rank < 1:
            raise ValueError(f"batch_size_per_rank must be >= 1, got {batch_size_per_rank}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.sampler = DistributedSampler(range(dataset_len), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=True)
        self.batch_size = batch_size_per_rank
        self.world_size, self.rank = world_size, rank
        self.global_batch = batch_size_per_rank * world_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; also resets the start step to 0."""
        self.epoch = epoch
        self.start_step = 0
        self.sampler.set_epoch(epoch)

    def set_start_step(self, step: int) -> None:
        """Begin the current epoch at batch ``step`` (resuming a run); 0 restarts it."""
        if not 0 <= step <= len(self):
            raise ValueError(f"start step must be in [0, {len(self)}], got {step}")
        self.start_step = step

    def __len__(self) -> int:
        """Steps per epoch."""
        return self.sampler.num_samples // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, SampleKey]]]:
        indices = list(self.sampler)  # this rank's share of the epoch's permutation
        for step in range(self.start_step, len(self)):
            chunk = indices[step * self.batch_size:(step + 1) * self.batch_size]
            yield [(index, SampleKey(self.epoch, step, j * self.world_size + self.rank, self.global_batch))
                   for j, index in enumerate(chunk)]
