"""The multi-block masks training draws, overlaid on real images.

The masks come from the same :class:`~openjepa.masks.MaskCollator` as training, keyed by
``(train.seed, epoch, step)``: the picture shows exactly the context and target patches of the first images
of that training step in a single-process run with the config's batch size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import RunConfig
from ..data.collate import MaskCollator
from ..data.sampler import SampleKey
from ..masks import BlockMasks, build_mask_sampler
from .draw import INK, MUTED, PALETTE, SMALL_SIZE, TITLE_SIZE, TileLayout, draw_legend, fit_text, new_canvas, put_text
from .images import PatchGrid, display_scale, enlarge
from .inputs import eval_images, training_batch

CONTEXT_COLOUR = PALETTE[0]
TARGET_COLOURS = PALETTE[1:7]
HIDDEN_COLOUR = (215, 215, 215)
HEADER = 110


def patch_grid_of(config: RunConfig) -> tuple[int, int]:
    """Rows and columns of patches of the config's (square) training images."""
    side = config.model.img_size // config.model.patch_size
    return side, side


def training_masks(config: RunConfig, count: int, epoch: int = 0, step: int = 0, world_size: int = 1) -> BlockMasks:
    """The masks of the first ``count`` images of training step ``step`` of epoch ``epoch`` (both from 0), as the
    training collator draws them for the global batch: ``data.global_batch`` when set, else ``data.batch_size x
    world_size x optim.accum_steps`` images."""
    sampler = build_mask_sampler(patch_grid_of(config), config.mask)
    collator = MaskCollator(sampler, seed=config.train.seed)
    trained = config.data.global_batch or config.data.batch_size * world_size * (config.optim.accum_steps or 1)
    global_batch = max(count, trained)
    keys = [SampleKey(epoch, step, position, global_batch) for position in range(count)]
    return collator.masks_for(keys, count)


def target_colour(block: int) -> tuple[int, int, int]:
    return TARGET_COLOURS[block % len(TARGET_COLOURS)]


def overlay_masks(
    pixels: np.ndarray, context: torch.Tensor, targets: torch.Tensor, patch_size: int, scale: int,
    grid: tuple[int, int],
) -> Image.Image:
    """One enlarged image with its context patches tinted, its target blocks filled and outlined in their colours
    and every other patch (seen by neither encoder nor loss) washed out in light grey.

    ``context``: ``[Kc]`` and ``targets``: ``[M, Kt]`` patch indices of this image."""
    base = enlarge(pixels, scale).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    geometry = PatchGrid(grid[0], grid[1], patch_size * scale)
    in_context = set(context.tolist())
    in_target = set(targets.flatten().tolist())
    for index in range(grid[0] * grid[1]):
        if index in in_context:
            draw.rectangle(geometry.patch_box(index), fill=(*CONTEXT_COLOUR, 70))
        elif index not in in_target:
            draw.rectangle(geometry.patch_box(index), fill=(*HIDDEN_COLOUR, 200))
    for block in range(targets.shape[0]):
        draw.rectangle(geometry.box(targets[block]), fill=(*target_colour(block), 80))
    if geometry.patch_px >= 8:  # patch borders, where they are large enough not to hide the image
        for r in range(1, grid[0]):
            draw.line([(0, r * geometry.patch_px), (base.width, r * geometry.patch_px)], fill=(255, 255, 255, 50))
        for c in range(1, grid[1]):
            draw.line([(c * geometry.patch_px, 0), (c * geometry.patch_px, base.height)], fill=(255, 255, 255, 50))
    width = max(2, geometry.patch_px // 6)
    for block in range(targets.shape[0]):
        draw.rectangle(geometry.box(targets[block]), outline=(*target_colour(block), 255), width=width)
    return Image.alpha_composite(base, layer).convert("RGB")


def mask_picture_layout(count: int, image_px: int, columns: int = 4) -> TileLayout:
    """Layout of :func:`render_masks` (its ``size`` is the picture's pixel size)."""
    tile = image_px * display_scale(image_px)
    return TileLayout(count, min(columns, count), (tile, tile), caption=18, header=HEADER)


def _block_shape(indices: torch.Tensor, grid_cols: int) -> tuple[int, int]:
    rows, cols = indices // grid_cols, indices % grid_cols
    return int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1


def render_masks(
    pixels: np.ndarray,
    masks: BlockMasks,
    config: RunConfig,
    title: str,
    captions: list[str] | None = None,
    columns: int = 4,
    note: str = "",
) -> Image.Image:
    """A grid of images (uint8 ``[N, H, W, 3]``) with their masks (``context`` ``[N, Kc]``, ``targets``
    ``[M, N, Kt]``), a title, an optional ``note`` line, the mask settings and a colour legend."""
    count, image_px = pixels.shape[0], pixels.shape[1]
    grid = patch_grid_of(config)
    if pixels.shape[1] != config.model.img_size or pixels.shape[2] != config.model.img_size:
        raise ValueError(f"images are {pixels.shape[1]}x{pixels.shape[2]}, the config's img_size is "
                         f"{config.model.img_size}")
    layout = mask_picture_layout(count, image_px, columns)
    scale = display_scale(image_px)
    image, draw = new_canvas(*layout.size)
    width = layout.size[0] - 2 * layout.margin
    m, num_blocks = config.mask, masks.targets.shape[0]
    block = _block_shape(masks.targets[0, 0], grid[1])
    put_text(draw, (layout.margin, layout.margin), fit_text(title, width, TITLE_SIZE), TITLE_SIZE, INK)
    lines = (
        (f"{note}; " if note else "")
        + f"{config.model.img_size}px images, {config.model.patch_size}px patches: a {grid[0]}x{grid[1]} patch grid",
        f"target scale {list(m.target_scale)}, aspect {list(m.target_aspect_ratio)}; context scale "
        f"{list(m.context_scale)}; min_keep {m.min_keep}",
        (f"this batch: {num_blocks} target blocks of {block[0]}x{block[1]} patches each, " if m.strategy != "random"
         else f"this batch (random masking): {num_blocks} targets of {masks.targets.shape[-1]} scattered patches each, ")
        + f"{masks.context.shape[1]} context patches per image (of {grid[0] * grid[1]})",
    )
    for k, line in enumerate(lines):
        put_text(draw, (layout.margin, layout.margin + 24 + 17 * k), fit_text(line, width, SMALL_SIZE), SMALL_SIZE,
                 MUTED)
    legend = [("context (encoder input)", CONTEXT_COLOUR)]
    legend += [(f"target {b + 1}", target_colour(b)) for b in range(num_blocks)]
    legend += [("unused", HIDDEN_COLOUR)]
    draw_legend(draw, (layout.margin, layout.margin + 80), legend, SMALL_SIZE, 12, 14)
    for i in range(count):
        tile = overlay_masks(pixels[i], masks.context[i], masks.targets[:, i], config.model.patch_size, scale, grid)
        x, y = layout.origin(i)
        image.paste(tile, (x, y))
        if captions:
            put_text(draw, (x + tile.width / 2, y + tile.height + 3), fit_text(captions[i], tile.width, SMALL_SIZE),
                     SMALL_SIZE, MUTED, "ma")
    return image


def masks_picture(config: RunConfig, count: int = 8, epoch: int = 0, step: int = 0, views: str = "training",
                  columns: int = 4) -> Image.Image:
    """The masks of training step ``step`` of epoch ``epoch`` for the first ``count`` images of the batch.

    ``views="training"``: the very images of that step, random crops included (what the encoders see);
    ``views="plain"``: whole images of the training split (centre crop) under the same masks, which makes it
    easier to judge block sizes against the objects of a dataset.
    """
    if views == "training":
        batch, masks = training_batch(config, epoch, step, count)
    elif views == "plain":
        batch = eval_images(config.data, config, "train", count, seed=config.train.seed)
        masks = training_masks(config, len(batch.images), epoch, step)
    else:
        raise ValueError(f"views must be 'training' or 'plain', got {views!r}")
    what = "the step's training views (random crops)" if views == "training" else "whole images (centre crop)"
    title = f"I-JEPA masks on {config.data.dataset}: training step {step} of epoch {epoch}"
    captions = [batch.class_name(int(label)) for label in batch.labels]
    return render_masks(batch.pixels, masks, config, title, captions, columns,
                        note=f"{what}, seed {config.train.seed}")
