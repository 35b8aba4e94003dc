"""Model inputs back to displayable pixels, and the patch geometry of a picture."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

DISPLAY_PX = 160  # small images are enlarged by a whole factor to about this many pixels


def denormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``[B, C, H, W]`` tensors -> uint8 ``[B, H, W, 3]`` (grey replicated to RGB).

    ``mean`` / ``std`` are those the data pipeline normalised with (on 0..1 pixels), one value per channel or
    one for all.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    channels = images.shape[1]
    m = torch.as_tensor(list(mean), dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=torch.float32).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, channels) or s.shape[1] not in (1, channels):
        raise ValueError(f"mean/std have {m.shape[1]}/{s.shape[1]} values for {channels}-channel images")
    pixels = (images.detach().float().cpu() * s + m).clamp(0, 1)
    pixels = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=3)
    elif channels != 3:
        raise ValueError(f"can only display 1- or 3-channel images, got {channels} channels")
    return pixels


def display_scale(image_px: int, target_px: int = DISPLAY_PX) -> int:
    """Whole enlargement factor that brings ``image_px`` near ``target_px`` (1 for large images)."""
    return max(1, round(target_px / max(1, image_px)))


def enlarge(pixels: np.ndarray, factor: int) -> Image.Image:
    """uint8 ``[H, W, 3]`` -> Pillow image enlarged ``factor`` times with sharp (nearest) pixels, so that
    individual pixels and patch borders stay visible."""
    image = Image.fromarray(pixels, "RGB")
    if factor == 1:
        return image
    return image.resize((pixels.shape[1] * factor, pixels.shape[0] * factor), Image.Resampling.NEAREST)


@dataclass(frozen=True)
class PatchGrid:
    """Where each patch of an image lands in an enlarged picture of it."""

    rows: int
    cols: int
    patch_px: int  # patch size in picture pixels (model patch size x enlargement)

    def rc(self, index: int) -> tuple[int, int]:
        """Row and column of a row-major patch index."""
        return divmod(int(index), self.cols)

    def box(self, indices: Sequence[int] | torch.Tensor) -> tuple[int, int, int, int]:
        """Pixel box ``(left, top, right, bottom)`` (inclusive) covering the given patches."""
        idx = torch.as_tensor(indices).reshape(-1)
        rows, cols = idx // self.cols, idx % self.cols
        p = self.patch_px
        return (int(cols.min()) * p, int(rows.min()) * p, (int(cols.max()) + 1) * p - 1, (int(rows.max()) + 1) * p - 1)

    def patch_box(self, index: int) -> tuple[int, int, int, int]:
        return self.box([index])


def crop_around(pixels: np.ndarray, row: int, col: int, patch: int, grid: tuple[int, int],
                margin: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    """A square window of ``2*margin+1`` patches around patch ``(row, col)`` of uint8 ``[H, W, 3]`` pixels,
    moved inwards at the image borders. Returns the crop and the patch's (row, col) inside it."""
    size = 2 * margin + 1
    rows, cols = grid
    top = min(max(0, row - margin), max(0, rows - size))
    left = min(max(0, col - margin), max(0, cols - size))
    bottom, right = min(rows, top + size), min(cols, left + size)
    crop = pixels[top * patch:bottom * patch, left * patch:right * patch]
    return crop, (row - top, col - left)
