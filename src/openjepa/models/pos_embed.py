"""Fixed 2-D sin-cos position embeddings and their resampling to other grids.

The layout matches the released I-JEPA weights: for a grid of ``H x W`` patches in row-major order, the first
half of the channels encodes the *column* index and the second half the *row* index, each half being
``[sin(pos * omega), cos(pos * omega)]`` with ``omega_i = 10000 ** (-i / (D/4))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GridSize = tuple[int, int]


def to_2tuple(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; a pair stays a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[len(positions), embed_dim]`` sin-cos features of 1-D positions (computed in float64)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / (10000.0**omega)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: int | GridSize) -> torch.Tensor:
    """``[H*W, embed_dim]`` float32 2-D sin-cos embedding for a row-major ``H x W`` grid (no CLS row)."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    h, w = to_2tuple(grid_size)
    rows = torch.arange(h).repeat_interleave(w)  # row index of each patch
    cols = torch.arange(w).repeat(h)  # column index of each patch
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    return emb.float()


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: int | GridSize, old_grid: int | GridSize | None = None
) -> torch.Tensor:
    """Bicubically resample ``[1, H*W, D]`` patch position embeddings to another grid.

    There is no CLS token to strip: every row is a patch. ``old_grid`` defaults to a square grid.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"expected pos_embed of shape [1, N, D], got {tuple(pos_embed.shape)}")
    num, dim = pos_embed.shape[1], pos_embed.shape[2]
    if old_grid is None:
        side = int(round(num**0.5))
        if side * side != num:
            raise ValueError(f"{num} positions do not form a square grid; pass old_grid=(H, W)")
        old_grid = (side, side)
    old_h, old_w = to_2tuple(old_grid)
    new_h, new_w = to_2tuple(new_grid)
    if old_h * old_w != num:
        raise ValueError(f"old_grid {old_h}x{old_w} does not match {num} positions")
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    dtype = pos_embed.dtype
    grid = pos_embed.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(dtype)
