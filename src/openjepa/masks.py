"""Masking for I-JEPA. Multi-block (the method): ``M`` target blocks and one context block with every target
patch removed. Random (the paper's ablation): the same numbers of patches, scattered over the grid.

The sampler is vectorised over the batch (no Python loop per image or per block) and fixes the released
sampler's defects:

* blocks may touch the last row and column (positions are drawn over ``[0, H - h]`` inclusive, and a block may
  span the whole grid);
* block scale and aspect ratio are two independent draws;
* when context lengths differ across a batch, every image keeps an unbiased random subset of its context patches
  of the batch-minimum size, instead of losing the tail of its (row-major) index list;
* constraints that cannot be met end with a clear error instead of an endless retry loop.

As in the released recipe, one target-block size and one context-block size are drawn per batch (so every target
block of the batch has the same number of patches), and block positions are drawn per image.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from .config_ranges import check_section
from .errors import MaskSamplingError
from .models.pos_embed import GridSize, to_2tuple
from .seeding import generator_or_default as _generator_or_default
from .seeding import seeded_generator as _seeded_generator

STRATEGIES = ("multiblock", "random")


def remove_targets(allowed: np.ndarray, targets: np.ndarray) -> None:
    """Mark every target patch (``targets`` ``[B, M, K]``) as not allowed in the boolean ``[B, N]`` mask, in place."""
    allowed[np.arange(len(allowed))[:, None], targets.reshape(len(allowed), -1)] = False


@dataclass(frozen=True)
class MaskConfig:
    """Multi-block mask settings (defaults: the paper's)."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect_ratio: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 10  # minimum number of context patches left after removing the targets
    allow_overlap: bool = False  # keep target patches in the context (an ablation, not the method)
    max_tries: int = 50  # re-draws of the images whose context is too small before giving up
    strategy: str = "multiblock"  # multiblock (I-JEPA) or random (scattered patches; the paper's ablation)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise MaskSamplingError(f"mask.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        check_section(self, "mask", MaskSamplingError)


class BlockMasks(NamedTuple):
    """Patch indices (row-major over the patch grid) of one batch."""

    context: torch.Tensor  # [B, Kc], sorted
    targets: torch.Tensor  # [M, B, Kt], row-major inside each block


class MultiBlockMaskSampler:
    """Draws context and target masks for a patch grid.

    >>> sampler = MultiBlockMaskSampler((14, 14))
    >>> masks = sampler.sample(8, torch.Generator().manual_seed(0))
    >>> masks.targets.shape[:2]
    torch.Size([4, 8])
    """

    def __init__(self, grid_size: int | GridSize, config: MaskConfig | None = None, **overrides: Any):
        cfg = config or MaskConfig()
        if overrides:
            cfg = MaskConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self.height, self.width = to_2tuple(grid_size)
        self.num_patches = self.height * self.width
        if self.height < 1 or self.width < 1:
            raise MaskSamplingError(f"empty patch grid {self.height}x{self.width}")
        check_section(cfg, "mask", MaskSamplingError)  # again: a MaskConfig may have been changed since
        largest_context = self._block_shape(cfg.context_scale[1], 1.0)
        if largest_context[0] * largest_context[1] < cfg.min_keep:
            raise MaskSamplingError(
                f"a context block of scale <= {cfg.context_scale[1]} on a {self.height}x{self.width} patch grid "
                f"holds at most {largest_context[0] * largest_context[1]} patches, fewer than min_keep="
                f"{cfg.min_keep}; lower mask.min_keep or use more patches (larger images or smaller patches)"
            )

    # -- block geometry --------------------------------------------------------------------------------------------
    def _block_shape(self, scale: float, aspect: float) -> tuple[int, int]:
        """Height and width of a block covering ``scale`` of the grid with ``height / width == aspect``."""
        area = scale * self.num_patches
        h = min(self.height, max(1, round(math.sqrt(area * aspect))))
        w = min(self.width, max(1, round(math.sqrt(area / aspect))))
        return h, w

    def _draw_shape(self, scale: tuple[float, float], aspect: tuple[float, float], g: torch.Generator):
        s, a = torch.rand(2, generator=g, dtype=torch.float64).tolist()  # two independent draws
        return self._block_shape(scale[0] + s * (scale[1] - scale[0]), aspect[0] + a * (aspect[1] - aspect[0]))

    def draw_shapes(self, g: torch.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
        """One target-block shape and one context-block shape for a batch."""
        cfg = self.config
        target = self._draw_shape(cfg.target_scale, cfg.target_aspect_ratio, g)
        context = self._draw_shape(cfg.context_scale, cfg.context_aspect_ratio, g)
        return target, context

    # The bookkeeping below runs in NumPy on small integer and boolean arrays; the random draws come from the torch
    # generator (so masks stay a function of its seed). Torch would split these ops over its intra-op threads from
    # 32k elements on (a 16x16 grid at batch 128), and on a busy CPU each such split can stall for milliseconds.
    def _corners(self, shape: tuple[int, int], count: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        h, w = shape
        top = torch.randint(0, self.height - h + 1, (count,), generator=g).numpy()
        left = torch.randint(0, self.width - w + 1, (count,), generator=g).numpy()
        return top, left

    def _block_indices(self, shape: tuple[int, int], top: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Row-major patch indices ``[count, h*w]`` of blocks with the given top-left corners."""
        h, w = shape
        rows = top[:, None] + np.arange(h)
        cols = left[:, None] + np.arange(w)
        return (rows[:, :, None] * self.width + cols[:, None, :]).reshape(len(top), h * w)

    def _block_cover(self, shape: tuple[int, int], top: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Boolean ``[count, N]`` coverage of one block per row."""
        h, w = shape
        r = np.arange(self.height) - top[:, None]
        c = np.arange(self.width) - left[:, None]
        inside = ((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :]
        return inside.reshape(len(top), self.num_patches)

    def _draw_rows(self, count, target_shape, context_shape, g):
        """Targets ``[count, M, Kt]`` and the boolean context ``[count, N]`` for ``count`` images."""
        m = self.config.num_targets
        t_top, t_left = self._corners(target_shape, count * m, g)
        targets = self._block_indices(target_shape, t_top, t_left).reshape(count, m, -1)
        c_top, c_left = self._corners(context_shape, count, g)
        context = self._block_cover(context_shape, c_top, c_left)
        if not self.config.allow_overlap:
            remove_targets(context, targets)
        return targets, context

    # -- sampling --------------------------------------------------------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BlockMasks:
        """Masks for ``batch_size`` images; deterministic for a seeded ``generator``."""
        g = _generator_or_default(generator)
        cfg = self.config
        target_shape, context_shape = self.draw_shapes(g)
        targets, context = self._draw_rows(batch_size, target_shape, context_shape, g)
        for attempt in range(cfg.max_tries):
            bad = np.flatnonzero(context.sum(1) < cfg.min_keep)
            if bad.size == 0:
                break
            if attempt == cfg.max_tries // 2:  # these block sizes may be the problem: draw new ones for all
                target_shape, context_shape = self.draw_shapes(g)
                targets, context = self._draw_rows(batch_size, target_shape, context_shape, g)
                continue
            targets[bad], context[bad] = self._draw_rows(bad.size, target_shape, context_shape, g)
        else:
            raise MaskSamplingError(self._infeasible_message())
        block_major = np.ascontiguousarray(targets.transpose(1, 0, 2), dtype=np.int64)
        return BlockMasks(self._equalise(context, g), torch.from_numpy(block_major))

    def _equalise(self, context: np.ndarray | torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Unbiased subsample of every image's context patches (boolean ``[B, N]``) down to the batch minimum,
        as sorted indices ``[B, keep]``."""
        context = np.asarray(context, dtype=bool)
        keep = int(context.sum(1).min())
        keys = torch.rand(context.shape, generator=g).numpy()
        keys[~context] = 2.0  # never chosen while a real context patch is left
        chosen = np.argpartition(keys, keep - 1, axis=1)[:, :keep]
        chosen.sort(axis=1)
        return torch.from_numpy(chosen.astype(np.int64, copy=False))

    def _infeasible_message(self) -> str:
        cfg = self.config
        return (
            f"could not leave min_keep={cfg.min_keep} context patches outside {cfg.num_targets} target blocks "
            f"(scale {cfg.target_scale}, aspect ratio {cfg.target_aspect_ratio}) on a {self.height}x{self.width} "
            f"patch grid after {cfg.max_tries} tries; lower mask.min_keep, mask.num_targets or "
            f"mask.target_scale, raise mask.context_scale, or use more patches per image"
        )


class RandomMaskSampler:
    """Random masking, the paper's ablation of multi-block masking: every target is a set of patches drawn at
    random anywhere on the grid, and the context is drawn at random among the patches that no target covers.

    The sizes come from the block shapes that multi-block masking draws for the batch (from the same generator,
    the same way): each of the ``M`` targets (``mask.num_targets``) holds as many patches as a target block, and
    the context as many as the context block keeps when all ``M`` target blocks lie inside it (the fewest a
    multi-block context of that batch can hold; all of it with ``mask.allow_overlap``), never fewer than
    ``mask.min_keep``. When scattered targets leave an image fewer free patches, the batch's context shrinks to
    what every image has free (images left fewer than ``mask.min_keep`` draw their targets again). So the two
    strategies feed the networks similar numbers of tokens (the context somewhat fewer with random masking), and
    differ in where those tokens lie: contiguous blocks or scattered patches.

    >>> masks = RandomMaskSampler((7, 7), num_targets=2, min_keep=4).sample(8, torch.Generator().manual_seed(0))
    >>> masks.targets.shape[:2]
    torch.Size([2, 8])
    """

    def __init__(self, grid_size: int | GridSize, config: MaskConfig | None = None, **overrides: Any):
        self.blocks = MultiBlockMaskSampler(grid_size, config, **overrides)  # validates the settings
        self.config = self.blocks.config
        self.height, self.width, self.num_patches = self.blocks.height, self.blocks.width, self.blocks.num_patches

    def _smallest_keys(self, rows: int, keep: int, allowed: np.ndarray | None, g: torch.Generator) -> np.ndarray:
        """``keep`` distinct patches per row drawn uniformly among the ``allowed`` ones, sorted: ``[rows, keep]``."""
        keys = torch.rand(rows, self.num_patches, generator=g).numpy()
        if allowed is not None:
            keys[~allowed] = 2.0  # never chosen while an allowed patch is left
        chosen = np.argpartition(keys, keep - 1, axis=1)[:, :keep]
        chosen.sort(axis=1)
        return chosen

    def _draw_targets(self, count: int, m: int, kt: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Targets ``[count, M, Kt]`` and the boolean ``[count, N]`` of patches left for the context."""
        targets = self._smallest_keys(count * m, kt, None, g).reshape(count, m, kt)
        free = np.ones((count, self.num_patches), dtype=bool)
        if not self.config.allow_overlap:
            remove_targets(free, targets)
        return targets, free

    def _sizes(self, g: torch.Generator) -> tuple[int, int, int]:
        """Targets ``M``, patches per target and patches of the context, from the batch's multi-block shapes."""
        (th, tw), (ch, cw) = self.blocks.draw_shapes(g)
        m, kt = self.config.num_targets, th * tw
        covered = 0 if self.config.allow_overlap else m * kt
        return m, kt, max(self.config.min_keep, ch * cw - covered)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BlockMasks:
        """Masks for ``batch_size`` images; deterministic for a seeded ``generator``."""
        g = _generator_or_default(generator)
        cfg = self.config
        m, kt, kc = self._sizes(g)
        targets, free = self._draw_targets(batch_size, m, kt, g)
        for _ in range(cfg.max_tries):
            bad = np.flatnonzero(free.sum(1) < cfg.min_keep)
            if bad.size == 0:
                break
            targets[bad], free[bad] = self._draw_targets(bad.size, m, kt, g)
        else:
            raise MaskSamplingError(
                f"could not leave min_keep={cfg.min_keep} context patches outside {m} random targets of {kt} "
                f"patches on a {self.height}x{self.width} patch grid after {cfg.max_tries} tries; lower "
                f"mask.min_keep, mask.num_targets or mask.target_scale"
            )
        keep = min(kc, int(free.sum(1).min()))
        context = self._smallest_keys(batch_size, keep, free, g)
        block_major = np.ascontiguousarray(targets.transpose(1, 0, 2), dtype=np.int64)
        return BlockMasks(torch.from_numpy(context.astype(np.int64, copy=False)), torch.from_numpy(block_major))


MaskSampler = MultiBlockMaskSampler | RandomMaskSampler


def build_mask_sampler(grid_size: int | GridSize, config: MaskConfig | None = None) -> MaskSampler:
    """The sampler of ``config.strategy`` (``multiblock``: :class:`MultiBlockMaskSampler`, ``random``:
    :class:`RandomMaskSampler`) for a patch grid."""
    cfg = config or MaskConfig()
    if cfg.strategy == "random":
        return RandomMaskSampler(grid_size, cfg)
    return MultiBlockMaskSampler(grid_size, cfg)


# Names that lived here before the collator moved to openjepa.data (the floor above, which this module may not
# import): the generator helpers still resolve, with a warning; the collator's names say where they went.
_MOVED_UP = {"MaskCollator": "openjepa.data.collate (or openjepa.MaskCollator)",
             "MaskedBatch": "openjepa.data.collate", "SampleKey": "openjepa.data.sampler"}
_MOVED_ASIDE = {"seeded_generator": _seeded_generator, "generator_or_default": _generator_or_default}


def __getattr__(name: str) -> Any:
    if name in _MOVED_ASIDE:
        warnings.warn(f"openjepa.masks.{name} is deprecated: import it from openjepa.seeding", DeprecationWarning,
                      stacklevel=2)
        return _MOVED_ASIDE[name]
    if name in _MOVED_UP:
        raise AttributeError(f"openjepa.masks.{name} moved to {_MOVED_UP[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
