"""What every dataset source provides: a length, labels, class names, default statistics and lazy images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np
from PIL import Image

from .images import to_standard_mode
from .stats import Stats


class PictureLike(Protocol):
    """An image whose size is known before its pixels are decoded (see :class:`openjepa.data.images.Picture`)."""

    size: tuple[int, int]  # (width, height) as stored
    mode: str  # Pillow mode as stored

    def decode(self, channels: int, draft: tuple[int, int] | None = None) -> Image.Image: ...

    def __enter__(self) -> PictureLike: ...

    def __exit__(self, *exc) -> None: ...


class ArrayPicture:
    """One uint8 image of an in-memory array, ``[H, W]`` (grey) or ``[H, W, 3]``."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.size = (pixels.shape[1], pixels.shape[0])
        self.mode = "L" if pixels.ndim == 2 else "RGB"

    def decode(self, channels: int, draft: tuple[int, int] | None = None) -> Image.Image:
        return to_standard_mode(Image.fromarray(self.pixels, self.mode), channels)

    def __enter__(self) -> ArrayPicture:
        return self

    def __exit__(self, *exc) -> None:
        return None


class ImageSource(ABC):
    """One split of a dataset: ``len(source)`` images with integer labels (``-1``: unknown).

    ``stats`` holds the default normalisation (mean, std on 0..1 pixels) for the source's native channels;
    ``in_memory`` tells whether images are decoded arrays (cheap, best loaded in the main process).
    """

    name: str
    split: str
    classes: tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    stats: Stats
    in_memory: bool

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def open(self, index: int) -> PictureLike:
        """The image of sample ``index`` (raises :class:`UnreadableImage` for a bad file)."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (a path, or dataset/split/index), for reports."""

    def load(self, index: int, channels: int = 3) -> Image.Image:
        """The decoded image of sample ``index`` in mode ``L`` or ``RGB`` (``L`` only for grey images or
        ``channels == 1``); raises :class:`UnreadableImage` for a bad file."""
        with self.open(index) as picture:
            return picture.decode(channels)

    @property
    def mean(self) -> tuple[float, ...]:
        """Default normalisation mean of the native channels (on 0..1 pixels)."""
        return self.stats[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self.stats[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, {len(self)} images, " \
               f"{len(self.classes)} classes)"


class ArraySource(ImageSource):
    """Images held in a uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (colour)."""

    in_memory = True

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                 stats: Stats):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise ValueError(f"images must be uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.name, self.split = name, split
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = tuple(classes)
        self.stats = stats

    def open(self, index: int) -> ArrayPicture:
        return ArrayPicture(self.images[index])

    def describe(self, index: int) -> str:
        return f"{self.name} {self.split} image {index}"


class SubsetSource(ImageSource):
    """The samples ``indices`` of another source (e.g. ``data.max_samples``)."""

    def __init__(self, source: ImageSource, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name, self.split, self.classes = source.name, source.split, source.classes
        self.stats, self.in_memory = source.stats, source.in_memory
        self.labels = source.labels[self.indices]

    def open(self, index: int) -> PictureLike:
        return self.source.open(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))
