"""Vision Transformer encoder for I-JEPA: no CLS token, fixed 2-D sin-cos position embeddings, pre-norm blocks.

Parameter names are those of the released I-JEPA weights (``patch_embed.proj``, ``pos_embed``,
``blocks.N.attn.qkv`` ..., ``norm``), so an official encoder state dict loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import (LAYER_NORM_EPS, Block, PatchEmbed, drop_path_rates, gather_tokens, init_fan_in_scaled,
                     init_transformer_weights, normed)
from .pos_embed import GridSize, resample_pos_embed, sincos_2d


@dataclass(frozen=True)
class ViTArch:
    """Width, depth, heads and MLP ratio of a ViT preset."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


PRESETS: dict[str, ViTArch] = {
    "vit_tiny": ViTArch(192, 12, 3),
    "vit_small": ViTArch(384, 12, 6),
    "vit_base": ViTArch(768, 12, 12),
    "vit_large": ViTArch(1024, 24, 16),
    "vit_huge": ViTArch(1280, 32, 16),
    "vit_giant": ViTArch(1408, 40, 16, 48 / 11),
}


def preset_name(name: str) -> str:
    """Canonical preset name: ``"small"``, ``"vit_small"`` and ``"ViT-S"`` all give ``"vit_small"``."""
    key = name.lower().replace("-", "_")
    aliases = {"s": "small", "t": "tiny", "ti": "tiny", "b": "base", "l": "large", "h": "huge", "g": "giant"}
    key = key.removeprefix("vit_")
    key = aliases.get(key, key)
    canonical = f"vit_{key}"
    if canonical not in PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; choose one of {', '.join(PRESETS)}")
    return canonical


class VisionTransformer(nn.Module):
    """ViT encoder. ``forward(x, masks)`` keeps only the given patch indices after adding position embeddings.

    Args:
        img_size: training resolution (int or ``(H, W)``); other resolutions work, with the position
            embeddings resampled bicubically.
        patch_size: side of the square patches.
        in_chans: input channels (3 for RGB, 1 for grey).
        embed_dim, depth, num_heads, mlp_ratio: the architecture (see ``PRESETS``).
        qkv_bias: bias in the query/key/value projection.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0).
        init_std: standard deviation of the truncated-normal initialisation.
        patch_embed_gain: None (the paper's code): the patch embedding is initialised like every other weight,
            std ``init_std``. A number: its weights get std ``gain / sqrt(fan_in)``, so that unit-variance pixels
            give patch embeddings of std ``gain`` whatever the patch size and channel count. With std 0.02, a
            16x16 RGB patch (fan-in 768) gives 0.55, but a 4x4 grey one (fan-in 16) gives 0.08: next to the
            sin-cos position embedding (std 0.71) the image content is then nearly invisible at the start, and
            small-patch models can settle on position-only features. The small recipes use 0.55.
    """

    def __init__(
        self,
        img_size: int | GridSize = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        init_std: float = 0.02,
        norm_eps: float = LAYER_NORM_EPS,
        patch_embed_gain: float | None = None,
    ):
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        # A frozen Parameter rather than a buffer: the released checkpoints (and their optimizer states) count it
        # among the parameters, and keeping it there keeps both layouts interchangeable.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.patch_embed.grid_size)[None], requires_grad=False)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], norm_eps) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.grad_checkpointing = False
        init_transformer_weights(self, self.blocks, init_std)
        self.patch_embed_gain = patch_embed_gain
        if patch_embed_gain is not None:
            init_fan_in_scaled(self.patch_embed.proj, patch_embed_gain)

    # -- introspection -------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def grid_size(self) -> GridSize:
        return self.patch_embed.grid_size

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def in_chans(self) -> int:
        return self.patch_embed.proj.in_channels

    def arch(self) -> dict:
        """Plain-dict description of the architecture (enough to rebuild it with ``VisionTransformer(**arch)``)."""
        return {
            "img_size": list(self.patch_embed.img_size),
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.blocks[0].attn.qkv.bias is not None if self.depth else True,
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        self.grad_checkpointing = enable

    # -- forward -------------------------------------------------------------------------------------------------
    def pos_embed_for(self, grid: GridSize) -> torch.Tensor:
        """Position embeddings for a patch grid, resampled from the training grid when it differs."""
        return resample_pos_embed(self.pos_embed, grid, self.grid_size)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None = None):
        """Patchify, add position embeddings, keep the masked-in patches."""
        grid = self.patch_embed.grid_for(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x) + self.pos_embed_for(grid)
        if masks is not None:
            if isinstance(masks, (list, tuple)):  # the released code's list of [B, K] index tensors
                masks = torch.stack(list(masks))
            x = gather_tokens(x, masks)
        return x

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``[B, C, H, W] -> [B, N, D]``, or ``[B, K, D]`` / ``[M*B, K, D]`` for masks ``[B, K]`` / ``[M, B, K]``."""
        return normed(self.norm, self.run_blocks(self.prepare_tokens(x, masks)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All patch tokens after the final norm, ``[B, N, D]`` (timm's name for the unpooled output)."""
        return self.forward(x)

    def get_intermediate_layers(
        self, x: torch.Tensor, n: int | Sequence[int] = 1, norm: bool = True
    ) -> list[torch.Tensor]:
        """Outputs ``[B, N, D]`` of the last ``n`` blocks (or of the given block indices), optionally normed."""
        wanted = set(range(self.depth - n, self.depth)) if isinstance(n, int) else {i % self.depth for i in n}
        x = self.prepare_tokens(x)
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                outputs.append(self.norm(x) if norm else x)
        return outputs

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style: the final output plus the outputs of the selected blocks (all blocks by default),
        each as a ``[B, D, H/p, W/p]`` feature map."""
        grid = self.patch_embed.grid_for(x.shape[-2], x.shape[-1])
        layers = self.get_intermediate_layers(x, self.depth if indices is None else indices, norm)
        maps = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid) for t in layers]
        return self.forward(x), maps


def vit_encoder(name: str, patch_size: int = 16, img_size: int | GridSize = 224, **kwargs) -> VisionTransformer:
    """Build a preset encoder, e.g. ``vit_encoder("vit_small", patch_size=16, img_size=224)``; keyword arguments
    override the preset (``depth=2`` for a shallow test model)."""
    arch = {**asdict(PRESETS[preset_name(name)]), **kwargs}
    return VisionTransformer(img_size=img_size, patch_size=patch_size, **arch)


def vit_tiny(**kwargs) -> VisionTransformer:
    return vit_encoder("vit_tiny", **kwargs)


def vit_small(**kwargs) -> VisionTransformer:
    return vit_encoder("vit_small", **kwargs)


def vit_base(**kwargs) -> VisionTransformer:
    return vit_encoder("vit_base", **kwargs)


def vit_large(**kwargs) -> VisionTransformer:
    return vit_encoder("vit_large", **kwargs)


def vit_huge(**kwargs) -> VisionTransformer:
    return vit_encoder("vit_huge", **kwargs)


def vit_giant(**kwargs) -> VisionTransformer:
    return vit_encoder("vit_giant", **kwargs)
