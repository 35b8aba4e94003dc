"""``data.dataset=shards``: tar shards read sequentially for training, by random access for evaluation.

**Evaluation** (and anything else that indexes a dataset) uses :class:`ShardSource`, a normal
:class:`~openjepa.data.base.ImageSource`: sample ``i`` is read from the byte range the index recorded
(:mod:`openjepa.data.shard_index`).

**Training** uses :class:`ShardStream`, which reads each shard front to back. How an epoch is split, for
``P = world_size`` ranks with ``W`` DataLoader workers each (``W = 1`` without workers), ``B`` images per rank and
micro-batch, ``A`` micro-batches per step (gradient accumulation; ``A = 1`` without) and ``G = B * P * A``:

1. The epoch's sequence is the shards in an order drawn from ``(seed, epoch)``, each shard's samples in stored
   order. It has ``S = N // G`` steps; the last ``N - S * G`` samples of the sequence (fewer than ``G``, from the
   shard that comes last that epoch) are left out, as the folder loader drops its incomplete last batch.
2. Rank ``r`` gets the contiguous part ``[r * S * A * B, (r + 1) * S * A * B)`` of the sequence: ``S * A``
   micro-batches, numbered ``u = s * A + a`` (step ``s``, micro-batch ``a``). Worker ``w`` of the rank produces the
   rank's micro-batches ``w, w + W, w + 2W, ...`` (the order in which a DataLoader collects batches from its
   workers), so it gets the next ``B * len(range(w, S * A, W))`` samples of the rank's part. Every sample of the
   epoch's sequence is therefore read by exactly one worker of one rank, and every rank makes exactly ``S`` steps
   (DDP needs equal step counts). A part is a byte range of one or a few shards: shards are split between
   workers at sample boundaries, so fewer shards than ``world_size * W`` workers still need no duplicated reads.
3. Each worker reads its samples in sequence through a shuffle buffer of ``data.shuffle_buffer`` samples (a full
   buffer emits a random one of its samples per sample read; the draws come from ``(seed, epoch, rank,
   worker)``). Its emitted samples, ``B`` at a time, form its micro-batches.

Keys are exact: every sample has a stable number in the index, its crop is drawn from ``(seed, epoch, number)``
and its :class:`~openjepa.data.sampler.SampleKey` is ``(epoch, s, j * P * A + a * P + r, G)`` -- the same key the
folder loader gives the ``j``-th image of micro-batch ``a`` of a rank's step ``s`` (micro-batch ``a`` of rank
``r`` plays the virtual rank ``a * P + r``). Masks are therefore the same pure function of ``(seed, epoch, step)``
as for folders. Which images make up a step depends on ``P``, ``A`` and ``W`` (the folder loader's does not), so
an exactly resumed epoch needs the same numbers of processes, micro-batches and workers; with other numbers the
interrupted epoch's remaining steps are planned anew for the new layout (some of its samples may then be read
twice or not at all; later epochs are complete).

Resuming at step ``k`` skips, in each worker, the samples its first micro-batches would have used without reading
them (the shuffle buffer's order is computed from the random draws alone, before any byte is read).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .sampler import SampleKey, virtual_rank
from .bad_files import format_unreadable
from .base import ImageSource, SubsetSource
from .datasets import PretrainDataset
from .images import Picture, UnreadableImage
from .shard_index import load_index, shard_paths
from .stats import IMAGENET_MEAN, IMAGENET_STD

SHARD_ORDER_STREAM = 0x5348524F  # separate random streams for the shard order and the shuffle buffers
BUFFER_STREAM = 0x53484246
MAX_OPEN_SHARDS = 16


def _entropy(*values: int) -> list[int]:
    return [int(v) % 2**63 for v in values]


class ShardSource(ImageSource):
    """One split of a set of tar shards, with random access to every sample (see :mod:`.shard_index`)."""

    in_memory = False

    def __init__(self, path, split: str = "train"):
        self.name, self.split = "shards", split
        self.paths = shard_paths(path, split)
        self.index = load_index(self.paths)
        if len(self.index) == 0:
            detail = ""
            if self.index.problems:
                detail = "; " + format_unreadable(self.index.problems, 5, "problems").replace("\n", " ")
            elif self.index.without_image:
                kinds = ", ".join(f"{n} with {ext}" for ext, n in self.index.without_image.most_common(3))
                detail = f"; samples without an image member: {kinds}"
            raise DataError(f"no image sample in the {len(self.paths)} shard(s) of data.path {path!r} (split "
                            f"{split}){detail}")
        self.labels = self.index.label
        self.classes = self.index.classes
        self.stats = (IMAGENET_MEAN, IMAGENET_STD)
        self.problems = self.index.problems
        # What `openjepa check-data` takes to scan these shards (the unreadable-file summary advises running it).
        self.root = path if isinstance(path, str) else " ".join(map(str, path))
        self._reset_files()

    def _reset_files(self) -> None:
        self._files: dict[int, object] = {}
        self._provided: dict[int, bytes | None] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        state = dict(self.__dict__)
        state["_files"], state["_provided"] = {}, {}
        return state

    def read(self, index: int) -> bytes:
        """The stored bytes of sample ``index``'s image (raises :class:`UnreadableImage`)."""
        number = int(self.index.shard[index])
        offset, size = int(self.index.offset[index]), int(self.index.size[index])
        if os.getpid() != self._pid:  # a forked worker: files opened by the parent share its file positions
            self._files, self._pid = {}, os.getpid()
        try:
            f = self._files.pop(number, None)
            if f is None:
                if len(self._files) >= MAX_OPEN_SHARDS:
                    self._files.pop(next(iter(self._files))).close()
                f = open(self.paths[number], "rb")
            self._files[number] = f  # most recently used last
            f.seek(offset)
            data = f.read(size)
        except OSError as exc:
            reason = ("shard not found (moved or deleted after it was indexed)" if isinstance(exc, FileNotFoundError)
                      else f"shard cannot be read ({exc.strerror or exc})")
            raise UnreadableImage(self.describe(index), reason) from exc
        if len(data) != size:
            raise UnreadableImage(self.describe(index), f"the shard is shorter than when it was indexed ({len(data)} "
                                                        f"of {size} bytes): it changed during the run")
        return data

    @contextmanager
    def providing(self, index: int, data: bytes | None):
        """Within the block, :meth:`open` of ``index`` uses ``data`` (bytes the stream has read already)."""
        self._provided[index] = data
        try:
            yield
        finally:
            self._provided.pop(index, None)

    def open(self, index: int) -> Picture:
        data = self._provided.pop(index, None)
        return Picture(self.describe(index), data if data is not None else self.read(index))

    def describe(self, index: int) -> str:
        return f"{self.paths[int(self.index.shard[index])]}:{self.index.names[index]}"


def shard_base(source: ImageSource) -> tuple[ShardSource, np.ndarray] | None:
    """The :class:`ShardSource` under ``source`` and the shard sample number of each of ``source``'s samples."""
    if isinstance(source, ShardSource):
        return source, np.arange(len(source), dtype=np.int64)
    if isinstance(source, SubsetSource) and isinstance(source.source, ShardSource):
        return source.source, source.indices
    return None


def emission_order(count: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer`` samples emits ``count`` samples read in order 0, 1, ...

    Each sample read joins the buffer; once the buffer is full, a uniformly drawn one of its samples leaves it.
    At the end the rest leave in random order. A function of the draws only, so it is known before reading."""
    if buffer <= 1 or count <= 1:
        return np.arange(count, dtype=np.int64)
    draws = rng.random(count)
    held: list[int] = []
    out: list[int] = []
    for position in range(count):
        held.append(position)
        if len(held) >= buffer:
            k = int(draws[position] * len(held))
            held[k], held[-1] = held[-1], held[k]
            out.append(held.pop())
    rest = rng.permutation(len(held))
    out.extend(held[k] for k in rest)
    return np.asarray(out, dtype=np.int64)


class ShardStream(IterableDataset):
    """Keyed training batches of one rank read sequentially from tar shards (see the module docstring).

    Each item is one micro-batch's list of ``(image, label, SampleKey)`` samples (``accum_steps`` of them per step,
    in order); pass it to a ``DataLoader`` with ``batch_size=None`` and ``collate_fn=MaskCollator(...)``. Like
    :class:`KeyedBatchSampler` it has :meth:`set_epoch`, :meth:`set_start_step`, ``steps_per_epoch`` and ``len()``
    (micro-batches per epoch). Use non-persistent workers: each epoch's workers are started with the epoch and
    start step set here.
    """

    def __init__(self, dataset: PretrainDataset, batch_size_per_rank: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle_buffer: int = 1000, accum_steps: int = 1):
        base = shard_base(dataset.source)
        if base is None:
            raise TypeError(f"ShardStream needs a dataset over shards, got {dataset.source!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.dataset = dataset
        self.shards, self.numbers = base
        self.sample_shard = self.shards.index.shard[self.numbers]  # non-decreasing: numbers follow shard order
        self.batch_size = batch_size_per_rank
        self.world_size, self.rank, self.seed, self.accum_steps = world_size, rank, seed, accum_steps
        self.global_batch = batch_size_per_rank * world_size * accum_steps
        self.shuffle_buffer = shuffle_buffer
        self.steps = len(self.numbers) // self.global_batch
        self.units = self.steps * accum_steps  # micro-batches per rank and epoch
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_step = 0

    def set_start_step(self, step: int) -> None:
        if not 0 <= step <= self.steps:
            raise ValueError(f"start step must be in [0, {self.steps}], got {step}")
        self.start_step = step

    def __len__(self) -> int:
        """Micro-batches per epoch (``steps_per_epoch x accum_steps``): what a DataLoader yields."""
        return self.units

    # -- the plan (pure functions of seed, epoch, rank, worker) -----------------------------------------------------
    def sequence(self, epoch: int) -> np.ndarray:
        """The epoch's samples (indices of the dataset) in reading order: shards permuted, samples in order."""
        shards = len(self.shards.paths)
        order = np.random.default_rng(_entropy(self.seed, epoch, SHARD_ORDER_STREAM)).permutation(shards)
        bounds = np.searchsorted(self.sample_shard, np.arange(shards + 1))
        return np.concatenate([np.arange(bounds[s], bounds[s + 1], dtype=np.int64) for s in order])

    def worker_units(self, workers: int, worker: int) -> range:
        """The micro-batches (``step * accum_steps + micro-batch``) of an epoch that worker ``worker`` of ``workers``
        produces."""
        return range(worker, self.units, workers)

    def worker_samples(self, epoch: int, workers: int, worker: int) -> np.ndarray:
        """The samples (dataset indices, in reading order) that worker ``worker`` of this rank reads in ``epoch``."""
        start = self.rank * self.units * self.batch_size
        start += self.batch_size * sum(len(self.worker_units(workers, w)) for w in range(worker))
        return self.sequence(epoch)[start:start + self.batch_size * len(self.worker_units(workers, worker))]

    def worker_order(self, epoch: int, workers: int, worker: int) -> np.ndarray:
        """Positions (into :meth:`worker_samples`) in the order the shuffle buffer emits them."""
        count = self.batch_size * len(self.worker_units(workers, worker))
        rng = np.random.default_rng(_entropy(self.seed, epoch, self.rank, worker, BUFFER_STREAM))
        return emission_order(count, self.shuffle_buffer, rng)

    # -- reading ----------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[tuple]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, batch = self.epoch, self.batch_size
        samples = self.worker_samples(epoch, workers, worker)
        order = self.worker_order(epoch, workers, worker)
        units = self.worker_units(workers, worker)
        done = len(range(worker, self.start_step * self.accum_steps, workers))  # its micro-batches before the start
        skip = done * batch
        emitted_at = np.empty(len(order), dtype=np.int64)
        emitted_at[order] = np.arange(len(order))
        held: dict[int, bytes | None] = {}
        pending: list[tuple[int, bytes | None]] = []
        next_out = skip
        for position in range(len(samples)):
            if emitted_at[position] < skip:
                continue  # used by a step before the start step: not even read
            held[position] = self._read(int(samples[position]))
            while next_out < len(order) and int(order[next_out]) in held:
                out = int(order[next_out])
                pending.append((int(samples[out]), held.pop(out)))
                next_out += 1
                if len(pending) == batch:
                    yield self._batch(epoch, units[done], pending)
                    done += 1
                    pending = []

    def _read(self, index: int) -> bytes | None:
        try:
            return self.shards.read(int(self.numbers[index]))
        except UnreadableImage:
            return None  # the dataset meets the error again when it opens the sample, records it and replaces it

    def _batch(self, epoch: int, unit: int, samples: list[tuple[int, bytes | None]]) -> list[tuple]:
        step, micro = divmod(unit, self.accum_steps)
        v, stride = virtual_rank(micro, self.rank, self.world_size), self.world_size * self.accum_steps
        items = []
        for j, (index, data) in enumerate(samples):
            key = SampleKey(epoch, step, j * stride + v, self.global_batch)
            with self.shards.providing(int(self.numbers[index]), data):
                items.append(self.dataset[(index, key)])
        return items
