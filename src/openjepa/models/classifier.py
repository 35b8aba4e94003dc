"""An image classifier made of an I-JEPA encoder and a linear head on its average-pooled output.

I-JEPA has no CLS token: the image representation is the mean of the patch tokens after the encoder's final
LayerNorm, as in the paper's evaluations. ``logits = head(mean_n(norm(blocks(patches))))`` is exactly the network
of Hugging Face's ``IJepaForImageClassification`` and of timm's ``VisionTransformer`` with ``class_token=False,
global_pool="avg", fc_norm=False``, so a fine-tuned classifier exports to both unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import DropPath, drop_path_rates
from .vit import VisionTransformer

HEAD_INIT_STD = 0.01  # a small head: the first steps do not push large, random gradients into the encoder


class ViTClassifier(nn.Module):
    """``encoder`` (a :class:`VisionTransformer`) + ``head`` (``nn.Linear(width, num_classes)``).

    State-dict keys: ``encoder.*`` (the encoder's own names) and ``head.weight`` / ``head.bias``."""

    def __init__(self, encoder: VisionTransformer, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=HEAD_INIT_STD, a=-2 * HEAD_INIT_STD, b=2 * HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, D]``: the average of the final-normed patch tokens."""
        return self.encoder(images).mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, num_classes]`` logits."""
        return self.head(self.features(images))

    def arch(self) -> dict[str, Any]:
        """Everything needed to rebuild the network: the encoder's architecture, its LayerNorm epsilon and the
        number of classes (:meth:`from_arch`)."""
        return {**self.encoder.arch(), "norm_eps": self.encoder.norm.eps, "num_classes": self.num_classes}

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> ViTClassifier:
        """A classifier of the architecture :meth:`arch` describes (weights initialised, to be loaded)."""
        args = dict(arch)
        num_classes = int(args.pop("num_classes"))
        return cls(VisionTransformer(**args), num_classes)


def set_drop_path(encoder: VisionTransformer, rate: float) -> None:
    """Give the encoder's blocks stochastic depth rising linearly from 0 (first block) to ``rate`` (last block),
    as when building it with ``drop_path_rate=rate``; ``rate=0`` removes it. Weights are untouched."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"the drop-path rate must be in [0, 1), got {rate}")
    for block, block_rate in zip(encoder.blocks, drop_path_rates(rate, len(encoder.blocks))):
        block.drop_path = DropPath(block_rate) if block_rate > 0 else nn.Identity()
