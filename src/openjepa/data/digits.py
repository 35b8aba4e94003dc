"""scikit-learn's handwritten digits (1,797 grey 8x8 images, values 0..16): the embedded default dataset.

The split is a fixed stratified 75/25 split (the same 25% of every class is held out, whatever the seed of a
run), computed here with numpy so that it does not depend on scikit-learn's splitting code. Pixels are scaled to
0..255 (``round(v * 255 / 16)``).

The transforms upscale the 8x8 images to the model's resolution with bicubic interpolation: it gives smooth pen
strokes, where nearest-neighbour upscaling gives 8x8 blocks whose edges (not the digit's shape) dominate the
patches of a ViT, bilinear leaves diamond-shaped artefacts, and Lanczos rings around strokes.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import DataError
from .base import ArraySource
from .stats import pixel_stats

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only digits needs it

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    return images, data.target.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices holding ``test_fraction`` of every class in the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=2)
def digits_source(split: str = "train") -> ArraySource:
    """The ``train`` (1,347 images) or ``test`` (450 images) split; statistics measured on the train split."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for digits; use 'train' or 'test'")
    images, labels = _digits()
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    chosen = train if split == "train" else test
    classes = tuple(str(d) for d in range(10))
    return ArraySource("digits", split, images[chosen], labels[chosen], classes, pixel_stats(images[train]))
