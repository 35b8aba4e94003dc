"""The I-JEPA predictor: a narrow ViT that predicts target-block representations from the context tokens.

Parameter names follow the released weights: ``predictor_embed``, ``mask_token``, ``predictor_pos_embed``,
``predictor_blocks.N...``, ``predictor_norm``, ``predictor_proj``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast_linear import linear
from .layers import (LAYER_NORM_EPS, RELEASED_TRUNCATION, Block, drop_path_rates, gather_tokens,
                     init_transformer_weights, normed)
from .pos_embed import GridSize, resample_pos_embed, sincos_2d, to_2tuple


class VisionTransformerPredictor(nn.Module):
    """``predictor_embed`` (encoder width -> predictor width) -> blocks -> ``predictor_norm`` -> ``predictor_proj``.

    Each target block is predicted in its own sequence: the context tokens followed by one shared learnable
    ``mask_token`` plus the fixed position embedding of every patch of that block. All blocks of a batch run in
    one call, as ``M * B`` sequences.

    Args:
        grid_size: patch grid of the training resolution (int or ``(H, W)``).
        embed_dim: encoder width (input and output of the predictor).
        predictor_embed_dim: predictor width (384 in the paper).
        depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate, init_std: as for the encoder.
    """

    def __init__(
        self,
        grid_size: int | GridSize,
        embed_dim: int = 768,
        predictor_embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        init_std: float = 0.02,
        norm_eps: float = LAYER_NORM_EPS,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.grid_size = to_2tuple(grid_size)
        self.embed_dim = embed_dim
        self.predictor_embed_dim = predictor_embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        self.predictor_pos_embed = nn.Parameter(
            sincos_2d(predictor_embed_dim, self.grid_size)[None], requires_grad=False
        )
        rates = drop_path_rates(drop_path_rate, depth)
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], norm_eps) for i in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        self.out_dim = out_dim or embed_dim
        self.predictor_proj = nn.Linear(predictor_embed_dim, self.out_dim)
        self.grad_checkpointing = False
        init_transformer_weights(self, self.predictor_blocks, init_std)
        nn.init.trunc_normal_(self.mask_token, std=init_std, a=-RELEASED_TRUNCATION, b=RELEASED_TRUNCATION)

    @property
    def depth(self) -> int:
        return len(self.predictor_blocks)

    def arch(self) -> dict:
        """Plain-dict description of the architecture."""
        return {
            "grid_size": list(self.grid_size),
            "embed_dim": self.embed_dim,
            "predictor_embed_dim": self.predictor_embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "out_dim": self.out_dim,
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(
        self,
        context: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        grid_size: GridSize | None = None,
    ) -> torch.Tensor:
        """Predict the target blocks.

        Args:
            context: encoder output on the context patches, ``[B, Kc, D]``.
            context_idx: their patch indices, ``[B, Kc]``.
            target_idx: patch indices of the ``M`` target blocks, ``[M, B, Kt]`` (or ``[B, Kt]`` for one block).
            grid_size: patch grid of the input, when it differs from the training grid.

        Returns:
            ``[M*B, Kt, D]`` predictions, block-major (row ``m*B + b`` is block ``m`` of image ``b``).
        """
        if target_idx.dim() == 2:
            target_idx = target_idx.unsqueeze(0)
        num_blocks, batch, num_targets = target_idx.shape
        if context.shape[0] != batch or context_idx.shape != context.shape[:2]:
            raise ValueError(
                f"context {tuple(context.shape)}, context_idx {tuple(context_idx.shape)} and "
                f"target_idx {tuple(target_idx.shape)} disagree on batch size or length"
            )
        pos = resample_pos_embed(self.predictor_pos_embed, grid_size or self.grid_size, self.grid_size)
        embed, proj = self.predictor_embed, self.predictor_proj
        x = linear(context, embed.weight, embed.bias) + gather_tokens(pos.expand(batch, -1, -1), context_idx)
        queries = self.mask_token + pos[0][target_idx.reshape(num_blocks * batch, num_targets)]
        blocks = list(self.predictor_blocks)
        if not blocks:
            return linear(self.predictor_norm(queries), proj.weight, proj.bias)
        x = self._run(blocks[0].forward_shared_context, x, queries, num_blocks, len(blocks) == 1)
        for blk in blocks[1:-1]:
            x = self._run(blk, x)
        if len(blocks) > 1:
            x = self._run(blocks[-1].forward_last, x, num_targets)
        return linear(normed(self.predictor_norm, x), proj.weight, proj.bias)

    def _run(self, fn, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
