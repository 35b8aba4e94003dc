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
    step: int  # batch index within the epoch (an optimisation step: all its micro-batches share it)
    position: int  # row of this sample in the global (all-rank, all-micro-batch) batch
    global_batch: int


def virtual_rank(micro_batch: int, rank: int, world_size: int) -> int:
    """The rank that micro-batch ``micro_batch`` of process ``rank`` plays in a run of ``world_size x accum_steps``
    processes without accumulation: ``micro_batch * world_size + rank``."""
    return micro_batch * world_size + rank


class KeyedBatchSampler:
    """Per-rank micro-batches of ``(index, SampleKey(epoch, step, position, global_batch))``.

    ``P = world_size`` processes each accumulate ``A = accum_steps`` micro-batches of ``B = batch_size_per_rank``
    images per step, so a step's global batch is ``G = B x P x A``. Micro-batch ``a`` of process ``r`` plays the
    *virtual rank* ``v = a x P + r`` of ``V = P x A``: its ``j``-th sample is image ``perm[s x G + j x V + v]`` of the
    epoch's permutation ``perm`` and sits at ``position = j x V + v`` of global batch ``s``. The union of a step's
    micro-batches over all processes is therefore exactly the single-process batch ``s`` of size ``G`` (same images,
    same positions, hence the same crops and masks), whatever ``P`` and ``A``. The permutation is
    :class:`torch.utils.data.DistributedSampler`'s (a function of ``seed`` and the epoch only). The last,
    incomplete global batch is dropped.

    Each step yields its ``A`` micro-batches in order ``a = 0 .. A-1``. Call :meth:`set_epoch` before each epoch, then
    :meth:`set_start_step` to resume inside it: the first ``k`` steps are skipped without loading any image.
    """

    def __init__(self, dataset_len: int, batch_size_per_rank: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, accum_steps: int = 1):
        if batch_size_per_rank < 1:
            raise ValueError(f"batch_size_per_rank must be >= 1, got {batch_size_per_rank}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        # One replica: the whole epoch's permutation, which is the same for any number of replicas.
        self.sampler = DistributedSampler(range(dataset_len), num_replicas=1, rank=0, shuffle=shuffle, seed=seed,
                                          drop_last=True)
        self.batch_size = batch_size_per_rank
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.virtual_ranks = world_size * accum_steps
        self.global_batch = batch_size_per_rank * self.virtual_ranks
        self.steps_per_epoch = dataset_len // self.global_batch
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; also resets the start step to 0."""
        self.epoch = epoch
        self.start_step = 0
        self.sampler.set_epoch(epoch)

    def set_start_step(self, step: int) -> None:
        """Begin the current epoch at step ``step`` (resuming a run); 0 restarts it."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"start step must be in [0, {self.steps_per_epoch}], got {step}")
        self.start_step = step

    def __len__(self) -> int:
        """Micro-batches per epoch (``steps_per_epoch x accum_steps``): what a DataLoader yields."""
        return self.steps_per_epoch * self.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, SampleKey]]]:
        perm = list(self.sampler)
        stride, g = self.virtual_ranks, self.global_batch
        for step in range(self.start_step, self.steps_per_epoch):
            for a in range(self.accum_steps):
                v = virtual_rank(a, self.rank, self.world_size)
                yield [(perm[step * g + j * stride + v], SampleKey(self.epoch, step, j * stride + v, g))
                       for j in range(self.batch_size)]
