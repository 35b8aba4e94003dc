"""Training and evaluation transforms (Pillow + numpy + torch; every random draw from a passed generator).

Crop boxes are continuous (sub-pixel) rather than rounded to whole pixels: Pillow resamples any box, and on the
tiny sources this library targets (8x8 digits, 28x28 MNIST) integer boxes would allow only a handful of distinct
crop sizes. Resizing uses Pillow's bicubic filter, which also antialiases when shrinking.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..models.pos_embed import to_2tuple
from .base import PictureLike

Box = tuple[float, float, float, float]  # left, top, right, bottom, in pixels
CROP_TRIES = 10


def random_resized_crop_box(size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                            generator: torch.Generator) -> Box:
    """A box covering a random fraction ``scale`` of the area with a log-uniform aspect ratio (width/height).

    After ``CROP_TRIES`` draws that do not fit, the largest centred box whose aspect ratio is within ``ratio``.
    """
    width, height = size
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_TRIES):
        u_area, u_ratio = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            u_left, u_top = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            left, top = u_left * (width - w), u_top * (height - h)
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, width / ratio[0]
    elif aspect > ratio[1]:
        w, h = height * ratio[1], height
    else:
        w, h = width, height
    return centred_box(size, w, h)


def centred_box(size: tuple[int, int], w: float, h: float) -> Box:
    left, top = (size[0] - w) / 2, (size[1] - h) / 2
    return left, top, left + w, top + h


def center_crop_box(size: tuple[int, int], out_hw: tuple[int, int], fraction: float = 1.0) -> Box:
    """The largest centred box with the output's aspect ratio, shrunk to ``fraction`` of its sides.

    Resizing this box to the output equals "resize the shorter side, then center-crop" in one resampling.
    """
    width, height = size
    out_aspect = out_hw[1] / out_hw[0]
    w, h = (width, width / out_aspect) if width / height < out_aspect else (height * out_aspect, height)
    return centred_box(size, w * fraction, h * fraction)


def draft_request(box: Box, size: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest image size at which ``box`` still has the output's resolution (None: no reduction helps)."""
    reduction = min((box[2] - box[0]) / out_hw[1], (box[3] - box[1]) / out_hw[0])
    if reduction < 2:  # JPEG drafts reduce by 2, 4 or 8
        return None
    return math.ceil(size[0] / reduction), math.ceil(size[1] / reduction)


class ToNormalisedTensor:
    """``L``/``RGB`` image -> float tensor ``[C, H, W]`` of ``(pixel / 255 - mean) / std``.

    One table lookup per pixel: the table holds the normalised value of each of the 256 levels per channel,
    which is faster than converting, scaling and shifting, and replicates grey images to every channel for free.
    """

    def __init__(self, channels: int, mean: tuple[float, ...], std: tuple[float, ...]):
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"need {channels} mean/std values, got {len(mean)}/{len(std)}")
        levels = np.arange(256, dtype=np.float64) / 255.0
        self.table = ((levels[None] - np.array(mean)[:, None]) / np.array(std)[:, None]).astype(np.float32)
        self.channels = channels
        self._planes = np.arange(channels)[:, None, None]

    def __call__(self, img: Image.Image, flip: bool = False) -> torch.Tensor:
        pixels = np.asarray(img)
        if flip:
            pixels = pixels[:, ::-1]
        if pixels.ndim == 2:  # grey: one lookup per channel, replicating it
            out = self.table[:, pixels]
        else:
            out = self.table[self._planes, pixels.transpose(2, 0, 1)]
        return torch.from_numpy(out)


class TrainTransform:
    """RandomResizedCrop + optional horizontal flip + resize + normalise, drawn from a given generator."""

    def __init__(self, img_size: int | tuple[int, int], channels: int, mean: tuple[float, ...],
                 std: tuple[float, ...], crop_scale: tuple[float, float] = (0.3, 1.0),
                 crop_ratio: tuple[float, float] = (0.75, 4 / 3), hflip: bool = False):
        self.out_hw = to_2tuple(img_size)
        self.channels = channels
        self.crop_scale, self.crop_ratio, self.hflip = tuple(crop_scale), tuple(crop_ratio), hflip
        self.to_tensor = ToNormalisedTensor(channels, mean, std)

    def __call__(self, picture: PictureLike, generator: torch.Generator) -> torch.Tensor:
        box = random_resized_crop_box(picture.size, self.crop_scale, self.crop_ratio, generator)
        flip = self.hflip and bool(torch.rand(1, generator=generator) < 0.5)
        img = picture.decode(self.channels, draft_request(box, picture.size, self.out_hw))
        box = _rescale_box(box, picture.size, img.size)
        img = img.resize((self.out_hw[1], self.out_hw[0]), Image.BICUBIC, box=box)
        return self.to_tensor(img, flip)


class EvalTransform:
    """Deterministic: resize the shorter side and center-crop to the model's size, then normalise."""

    def __init__(self, img_size: int | tuple[int, int], channels: int, mean: tuple[float, ...],
                 std: tuple[float, ...], crop_fraction: float = 1.0):
        self.out_hw = to_2tuple(img_size)
        self.channels = channels
        self.crop_fraction = crop_fraction
        self.to_tensor = ToNormalisedTensor(channels, mean, std)

    def __call__(self, picture: PictureLike) -> torch.Tensor:
        box = center_crop_box(picture.size, self.out_hw, self.crop_fraction)
        img = picture.decode(self.channels, draft_request(box, picture.size, self.out_hw))
        box = _rescale_box(box, picture.size, img.size)
        return self.to_tensor(img.resize((self.out_hw[1], self.out_hw[0]), Image.BICUBIC, box=box))


def _rescale_box(box: Box, stored: tuple[int, int], decoded: tuple[int, int]) -> Box:
    if stored == decoded:
        return box
    sx, sy = decoded[0] / stored[0], decoded[1] / stored[1]
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
