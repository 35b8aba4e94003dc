"""The "what did pretraining add?" baseline: a freshly initialised twin of an encoder."""

from __future__ import annotations

import torch
from torch import nn

from ..models.vit import VisionTransformer
from .features import unwrap_encoder


def random_init_like(encoder: nn.Module, seed: int = 0) -> VisionTransformer:
    """A freshly initialised encoder of the same architecture and initialisation (the starting point of
    training, with another seed).

    Seeded on a forked RNG, so the global generator of the caller is left exactly as it was.
    """
    vit = unwrap_encoder(encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = VisionTransformer(**vit.arch(), norm_eps=vit.norm.eps,
                                  patch_embed_gain=getattr(vit, "patch_embed_gain", None))
    device = next(vit.parameters()).device
    return fresh.to(device).eval()
