"""Map-style datasets over an :class:`ImageSource`: keyed training views and deterministic evaluation views.

An unreadable file never stops a run: its sample is replaced by another one, chosen by a generator seeded from
the sample's slot, so batches keep their shape and the replacement is the same in every worker and every re-run.
The file is recorded once per process in a :class:`BadFileTracker`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..seeding import seeded_generator
from .bad_files import BadFileTracker
from .base import ImageSource
from .images import UnreadableImage
from .sampler import SampleKey
from .transforms import EvalTransform, TrainTransform

# Separates the crop stream of sample ``index`` from the mask stream of step ``index`` (both hash three ints).
CROP_STREAM = 0x43524F50
MAX_REPLACEMENTS = 100


class _Replacing:
    """Loading with deterministic replacement of unreadable samples (shared by both datasets)."""

    source: ImageSource
    bad_files: BadFileTracker

    def _init_replacing(self, source: ImageSource, bad_files: BadFileTracker | None) -> None:
        self.source = source
        self.bad_files = bad_files if bad_files is not None else BadFileTracker()
        self._known_bad: set[int] = set()  # per process: skip files already found unreadable

    def _load(self, index: int, seed: int, epoch: int, view):
        """``(view(picture), label)`` of ``index``, or of its deterministic stand-in when unreadable."""
        candidate = index
        for attempt in range(MAX_REPLACEMENTS + 1):
            if candidate not in self._known_bad:
                try:
                    with self.source.open(candidate) as picture:
                        return view(picture), int(self.source.labels[candidate])
                except UnreadableImage as exc:
                    self._known_bad.add(candidate)
                    self.bad_files.record(exc.path, exc.reason)
            g = seeded_generator(seed, epoch, index, attempt + 1, CROP_STREAM)
            candidate = int(torch.randint(len(self.source), (1,), generator=g))
        raise DataError(
            f"{MAX_REPLACEMENTS + 1} samples in a row were unreadable; most of the dataset seems unusable. "
            f"Run `openjepa check-data` on it to see which files fail and why.\n{self.bad_files.summary() or ''}"
        )


class PretrainDataset(_Replacing, Dataset):
    """Training views whose crop depends only on ``(seed, epoch, index)``.

    Indexed with ``(index, SampleKey)`` pairs (what :class:`KeyedBatchSampler` yields), it returns
    ``(image [C, H, W], label, key)`` for :class:`openjepa.data.collate.MaskCollator`; indexed with a plain ``int``,
    ``(image, label)`` as at epoch 0.
    """

    def __init__(self, source: ImageSource, transform: TrainTransform, seed: int = 0,
                 bad_files: BadFileTracker | None = None):
        self._init_replacing(source, bad_files)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def view_generator(self, epoch: int, index: int) -> torch.Generator:
        return seeded_generator(self.seed, epoch, index, CROP_STREAM)

    def __getitem__(self, item: int | tuple[int, SampleKey]):
        index, key = item if isinstance(item, tuple) else (item, None)
        index = int(index)
        epoch = key.epoch if key is not None else 0
        # A fresh generator per attempt: a replacement's view is the same whether or not this process already
        # knew the first choice was unreadable.
        image, label = self._load(index, self.seed, epoch,
                                  lambda picture: self.transform(picture, self.view_generator(epoch, index)))
        return (image, label, key) if key is not None else (image, label)


class EvalDataset(_Replacing, Dataset):
    """``(image [C, H, W], label)`` with the deterministic evaluation transform."""

    def __init__(self, source: ImageSource, transform: EvalTransform, bad_files: BadFileTracker | None = None):
        self._init_replacing(source, bad_files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def __getitem__(self, index: int):
        return self._load(int(index), 0, 0, self.transform)
