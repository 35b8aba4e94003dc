"""Normalisation statistics: measured exactly from uint8 pixels, and adapted to the model's channel count."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

Stats = tuple[tuple[float, ...], tuple[float, ...]]

# The usual ImageNet statistics (RGB, on 0..1 pixels): the default for folders of photos and for CIFAR.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma weights: what Pillow's RGB -> L conversion uses.
LUMA = (0.299, 0.587, 0.114)
_CHUNK = 1 << 20  # pixels per step: small float copies, exact float64 sums (255^2 * 2^20 << 2^53)


class Moments:
    """Running per-channel pixel count, sum and sum of squares (exact integers held in float64)."""

    def __init__(self, channels: int):
        self.count = 0
        self.sum = np.zeros(channels)
        self.sum_sq = np.zeros(channels)

    def add(self, pixels: np.ndarray) -> Moments:
        """Add uint8 pixels ``[..., C]`` (or any shape when there is one channel)."""
        flat = pixels.reshape(-1, len(self.sum))
        for start in range(0, len(flat), _CHUNK):
            block = flat[start:start + _CHUNK].astype(np.float64)
            self.sum += block.sum(axis=0)
            self.sum_sq += np.einsum("ij,ij->j", block, block)
        self.count += len(flat)
        return self

    def merge(self, other: Moments) -> Moments:
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        return self

    def stats(self) -> Stats:
        """Mean and std on 0..1 pixels."""
        mean = self.sum / self.count
        var = np.maximum(self.sum_sq / self.count - mean**2, 0.0)
        return tuple(float(m) / 255 for m in mean), tuple(float(s) / 255 for s in np.sqrt(var))


def pixel_stats(images: np.ndarray) -> Stats:
    """Exact mean and std (on 0..1 pixels) per channel of uint8 images ``[N, H, W]`` or ``[N, H, W, C]``."""
    channels = images.shape[-1] if images.ndim == 4 else 1
    return Moments(channels).add(images).stats()


def adapt_stats(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> Stats:
    """Statistics of ``len(mean)`` channels expressed for a model with ``channels`` channels.

    Grey statistics are replicated for colour models (grey images are replicated too). Colour statistics become
    luminance ones for grey models: the mean exactly, the std as the luma-weighted sum of the channel stds, which
    is exact for fully correlated channels and a slight over-estimate otherwise (RGB channels of natural images
    are strongly correlated).
    """
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * channels, tuple(std) * channels
    if len(mean) == 3 and channels == 1:
        return (sum(w * m for w, m in zip(LUMA, mean)),), (sum(w * s for w, s in zip(LUMA, std)),)
    raise DataError(
        f"normalisation statistics have {len(mean)} values but the model has {channels} input channels; set "
        f"data.mean and data.std to {channels} values each (or 1 value, used for every channel)"
    )
