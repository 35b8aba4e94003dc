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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from .models.pos_embed import GridSize, to_2tuple


class MaskSamplingError(ValueError):
    """The mask settings cannot be satisfied for this grid."""


STRATEGIES = ("multiblock", "random")


def generator_or_default(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or one seeded from torch's global seed (so unseeded calls still follow torch.manual_seed)."""
    return generator if generator is not None else torch.Generator().manual_seed(torch.initial_seed() % 2**63)


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


class BlockMasks(NamedTuple):
    """Patch indices (row-major over the patch grid) of one batch."""

    context: torch.Tensor  # [B, Kc], sorted
    targets: torch.Tensor  # [M, B, Kt], row-major inside each block


class MaskedBatch(NamedTuple):
    """What the collate function hands to the training step."""

    images: torch.Tensor  # [B, C, H, W]
    labels: torch.Tensor  # [B], -1 where unknown
    context: torch.Tensor  # [B, Kc]
    targets: torch.Tensor  # [M, B, Kt]


def _check_range(name: str, lo_hi: tuple[float, float], low: float, high: float | None) -> tuple[float, float]:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    if not (low <= lo <= hi) or (high is not None and hi > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise MaskSamplingError(f"mask {name} must be an increasing pair within {bound}, got {tuple(lo_hi)}")
    return lo, hi


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
        if cfg.num_targets < 1:
            raise MaskSamplingError(f"mask num_targets must be >= 1, got {cfg.num_targets}")
        _check_range("target_scale", cfg.target_scale, 0.0, 1.0)
        _check_range("context_scale", cfg.context_scale, 0.0, 1.0)
        _check_range("target_aspect_ratio", cfg.target_aspect_ratio, 1e-6, None)
        _check_range("context_aspect_ratio", cfg.context_aspect_ratio, 1e-6, None)
        if cfg.min_keep < 1:
            raise MaskSamplingError(f"mask min_keep must be >= 1, got {cfg.min_keep}")
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
        g = generator_or_default(generator)
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

    The sizes come from the multi-block sampler with the same settings, drawn batch by batch from the same
    generator: each target holds as many patches as that batch's target block (``M`` of them, ``mask.num_targets``)
    and the context as many as that batch's multi-block context. Scattered targets can cover more of the grid than
    overlapping blocks; when an image is then left fewer free patches, the batch's context shrinks to what every
    image has free (never below ``mask.min_keep``; images short of that draw their targets again). So the two
    strategies feed the networks the same numbers of tokens (the context slightly fewer, on average, with random
    masking), and differ in where those tokens lie: contiguous blocks or scattered patches.

    >>> masks = RandomMaskSampler((7, 7), num_targets=2, min_keep=4).sample(8, torch.Generator().manual_seed(0))
    >>> masks.targets.shape[:2]
    torch.Size([2, 8])
    """

    def __init__(self, grid_size: int | GridSize, config: MaskConfig | None = None, **overrides: Any):
        self.blocks = MultiBlockMaskSampler(grid_size, config, **overrides)  # validates the settings
        self.config = self.blocks.config
        self.height, self.width, self.num_patches = self.blocks.height, self.blocks.width, self.blocks.num_patches

    def _smallest_keys(self, rows: int, keep: int, allowed: np.ndarray | None, g: torch.Generator) -> np.ndarray:
        """``keep`` distinct patches per row, uniformly at random among the ``allowed`` ones, sorted ``[rows, keep]``."""
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

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BlockMasks:
        """Masks for ``batch_size`` images; deterministic for a seeded ``generator``."""
        g = generator_or_default(generator)
        cfg = self.config
        sizes = self.blocks.sample(batch_size, g)
        m, kt, kc = sizes.targets.shape[0], sizes.targets.shape[-1], sizes.context.shape[1]
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


def seeded_generator(*entropy: int) -> torch.Generator:
    """A generator whose stream is a hash of the given integers (e.g. ``seed, epoch, step``)."""
    state = np.random.SeedSequence([int(e) % 2**63 for e in entropy]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@dataclass(frozen=True)
class SampleKey:
    """Where a sample sits in training: it makes masks a pure function of ``(seed, epoch, step)``."""

    epoch: int
    step: int  # batch index within the epoch
    position: int  # row of this sample in the global (all-rank) batch
    global_batch: int


class MaskCollator:
    """Collate function: stacks ``(image, label[, key])`` samples and draws the batch's masks.

    With :class:`SampleKey` keys (what the openjepa loader produces) the masks of a step are drawn for the whole
    global batch from a generator seeded by ``(seed, epoch, step)``, and each rank keeps its own rows. Masks are
    then identical whatever the number of workers or processes, and a resumed run draws exactly the masks of an
    uninterrupted one. Without keys, each DataLoader worker gets its own stream, seeded from the worker's torch
    seed (distinct per worker and per epoch).
    """

    def __init__(self, sampler: MaskSampler, seed: int = 0):
        self.sampler = sampler
        self.seed = seed
        self._fallback: torch.Generator | None = None
        self._fallback_seed: int | None = None

    def _worker_generator(self) -> torch.Generator:
        info = get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if self._fallback is None or self._fallback_seed != seed:
            self._fallback, self._fallback_seed = seeded_generator(self.seed, seed), seed
        return self._fallback

    def masks_for(self, keys: list[SampleKey] | None, batch_size: int) -> BlockMasks:
        if keys is None:
            return self.sampler.sample(batch_size, self._worker_generator())
        first = keys[0]
        masks = self.sampler.sample(first.global_batch, seeded_generator(self.seed, first.epoch, first.step))
        rows = torch.tensor([k.position for k in keys])
        # index_select, not advanced indexing: the latter took ~30 ms per batch with 2 intra-op threads on a busy CPU
        return BlockMasks(masks.context.index_select(0, rows), masks.targets.index_select(1, rows))

    def __call__(self, samples: list[tuple]) -> MaskedBatch:
        keyed = isinstance(samples[0][-1], SampleKey)
        keys = [s[-1] for s in samples] if keyed else None
        images = torch.stack([s[0] for s in samples])
        if len(samples[0]) - keyed >= 2:
            labels = default_collate([int(s[1]) for s in samples])
        else:
            labels = torch.full((len(samples),), -1, dtype=torch.long)
        masks = self.masks_for(keys, len(samples))
        return MaskedBatch(images, labels, masks.context, masks.targets)
