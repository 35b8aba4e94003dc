"""Transformer building blocks shared by the encoder and the predictor.

Module and parameter names follow the released I-JEPA code (``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...), so
state dicts move between the two without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .fast_linear import linear, linear_gelu
from .pos_embed import GridSize, to_2tuple
from .recompute import recomputable

LAYER_NORM_EPS = 1e-6


def drop_path_rates(final_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block, linear from 0 to ``final_rate`` (plain Python, so that models can be
    built on the meta device without initialising weights that a checkpoint will overwrite)."""
    if depth <= 1:
        return [0.0] * depth  # torch.linspace(0, r, 1) is [0.0] too
    return [final_rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch for a random subset of samples while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.act, nn.GELU) and self.act.approximate == "none":
            hidden = linear_gelu(x, self.fc1.weight, self.fc1.bias)
        else:
            hidden = self.act(linear(x, self.fc1.weight, self.fc1.bias))
        return linear(hidden, self.fc2.weight, self.fc2.bias)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (no attention matrix is kept)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(linear(x, self.qkv.weight, self.qkv.bias))

    def attend(self, qkv: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """Attention from the ``qkv`` projections ``[B, N, 3D]`` of a sequence.

        With ``num_queries``, only the last ``num_queries`` tokens are queried (they still attend to all ``N``):
        the output is ``[B, num_queries, D]``, exactly those rows of the full output.
        """
        dim = qkv.shape[-1] // 3
        q, k, v = qkv.split(dim, dim=-1)  # views: SDPA reads the strided heads without a copy
        if num_queries is not None:
            q = q[:, q.shape[1] - num_queries :]
        return self.attention(q, k, v)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``proj(softmax(q k^T / sqrt(d)) v)`` per head for queries ``[B, Nq, D]`` and keys/values ``[B, N, D]``."""
        batch, num_queries, dim = q.shape
        head_dim = dim // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)

        out = scaled_dot_product(heads(q), heads(k), heads(v))
        return linear(out.transpose(1, 2).reshape(batch, num_queries, dim), self.proj.weight, self.proj.bias)


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``[B, H, N, d]`` heads, by the kernel :mod:`.kernels` names for CPU.

    ``"explicit"`` builds the attention matrix with two batched matmuls (what the released code does): one large
    call each, where PyTorch's CPU flash kernel makes one small matmul per block of 32-64 queries and each head,
    which in bf16 goes through oneDNN with a call overhead that short ViT sequences cannot hide.
    """
    if (
        not torch.compiler.is_compiling()
        and q.device.type == "cpu"
        and kernels.attention_kernel(kernels.cpu_compute_dtype(q.dtype)) == "explicit"
    ):
        # The scale goes on the scores in place: the matmul's backward needs only q and k, not its output.
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
        return torch.matmul(scores.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = LAYER_NORM_EPS,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(normed(self.norm1, x)))
        return self.feed_forward(x)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The second half of the block: ``x + mlp(norm2(x))``."""
        return x + self.drop_path(self.mlp(normed(self.norm2, x)))

    def forward_last(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """The block's output for the last ``num_queries`` tokens only, ``[B, num_queries, D]``.

        Those tokens still attend to every token, so this equals ``forward(x)[:, -num_queries:]``; the queries,
        projection and MLP of the other tokens, whose outputs would be thrown away, are never computed.
        """
        dim = x.shape[-1]
        h = normed(self.norm1, x)
        weight, bias = self.attn.qkv.weight, self.attn.qkv.bias
        kv = linear(h, weight[dim:], None if bias is None else bias[dim:])
        tail = h[:, h.shape[1] - num_queries :]
        q = linear(tail, weight[:dim], None if bias is None else bias[:dim])
        k, v = kv.split(dim, dim=-1)
        x = x[:, x.shape[1] - num_queries :] + self.drop_path(self.attn.attention(q, k, v))
        return self.feed_forward(x)

    def forward_shared_context(self, context: torch.Tensor, queries: torch.Tensor, num_blocks: int,
                               last: bool = False) -> torch.Tensor:
        """The block on the ``M * B`` sequences ``[context of image b, queries of block m of image b]`` (the
        predictor's first block), given ``context`` ``[B, Kc, D]`` and ``queries`` ``[M*B, Kt, D]``.

        The context half of every sequence is the same for the ``M`` blocks of an image until its first attention,
        so its ``norm1`` and ``qkv`` are computed once per image and broadcast; the result is that of running
        :meth:`forward` on the concatenated sequences. When it is also the ``last`` block only the queries are
        output (as :meth:`forward_last` does).
        """
        batch = context.shape[0]
        num_queries = queries.shape[1]

        def per_block(t: torch.Tensor) -> torch.Tensor:  # [B, K, C] -> [M, B, K, C] without a copy
            return t.unsqueeze(0).expand(num_blocks, -1, -1, -1)

        def joined(ctx: torch.Tensor, qry: torch.Tensor) -> torch.Tensor:  # -> [M*B, Kc + Kt, C]
            qry = qry.view(num_blocks, batch, num_queries, qry.shape[-1])
            return torch.cat([per_block(ctx), qry], dim=2).flatten(0, 1)

        w, b = self.attn.qkv.weight, self.attn.qkv.bias
        qkv = joined(linear(normed(self.norm1, context), w, b), linear(normed(self.norm1, queries), w, b))
        if last:
            x = queries + self.drop_path(self.attn.attend(qkv, num_queries))
        else:
            x = joined(context, queries) + self.drop_path(self.attn.attend(qkv))
        return self.feed_forward(x)


def normed(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, marked as cheap to recompute in backward (see :mod:`.recompute`)."""
    return recomputable(norm(x), norm, x)


class PatchEmbed(nn.Module):
    """Non-overlapping patches through a strided convolution: ``[B, C, H, W] -> [B, H/p * W/p, D]``."""

    def __init__(self, img_size: int | GridSize = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = int(patch_size)
        for side in self.img_size:
            if side % self.patch_size:
                raise ValueError(
                    f"image size {self.img_size} is not divisible by the patch size {self.patch_size}; "
                    f"use a multiple of {self.patch_size} (e.g. {side // self.patch_size * self.patch_size})"
                )
        self.grid_size = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def grid_for(self, height: int, width: int) -> GridSize:
        """Patch grid of an input image, with a clear error when the size does not tile."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not divisible by the patch size {p}")
        return height // p, width // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"expected images [B, {self.proj.in_channels}, H, W], got {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


RELEASED_TRUNCATION = 2.0  # the released trunc_normal_(std=0.02) keeps its default bounds, +-2 (not +-2 std)


def init_transformer_weights(module: nn.Module, blocks: Iterable[Block], std: float = 0.02) -> None:
    """I-JEPA initialisation: truncated normal for linear/conv weights, zero biases, unit LayerNorms, then each
    residual projection (``attn.proj``, ``mlp.fc2``) of block ``i`` (1-based) divided by ``sqrt(2 i)``.

    As in the released code, the normal is truncated at +-2 in absolute value (``trunc_normal_``'s default
    bounds), which for std 0.02 is 100 standard deviations: in effect an untruncated normal of std ``std``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-RELEASED_TRUNCATION, b=RELEASED_TRUNCATION)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, block in enumerate(blocks, start=1):
            scale = math.sqrt(2.0 * layer_id)
            block.attn.proj.weight.div_(scale)
            block.mlp.fc2.weight.div_(scale)


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Select tokens by patch index.

    ``x``: ``[B, N, D]``; ``indices``: ``[B, K]`` or ``[M, B, K]`` (one index set per block and image).
    Returns ``[B, K, D]`` or ``[M*B, K, D]`` (block-major, the official order). One ``index_select`` on the
    flattened tokens: no expanded index tensor, no per-block loop, no concatenation.
    """
    batch, tokens, dim = x.shape
    if indices.shape[-2] != batch:
        raise ValueError(f"indices {tuple(indices.shape)} do not match a batch of {batch}")
    offsets = torch.arange(batch, device=indices.device).unsqueeze(1) * tokens
    flat = (indices + offsets).reshape(-1)
    out = x.reshape(batch * tokens, dim).index_select(0, flat)
    return out.reshape(-1, indices.shape[-1], dim)


def init_fan_in_scaled(layer: nn.Conv2d | nn.Linear, gain: float) -> None:
    """Weights from a normal of std ``gain / sqrt(fan_in)`` truncated at two standard deviations (which leaves an
    actual std of 0.88x that), zero bias. openjepa's own option (``model.patch_embed_gain``), not the released
    code's; the published small-image recipes were measured with it as it is."""
    fan_in = layer.weight[0].numel()
    std = gain / math.sqrt(fan_in)
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
