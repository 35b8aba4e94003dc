"""A deliberately plain I-JEPA training step, used only to keep the fast path honest (tests/test_step_parity.py).

It reads the weights of an :class:`openjepa.IJEPA` but none of its forward code: explicit softmax attention (the
attention matrix is built), one predictor pass per target block, gathering with ``torch.gather`` per block,
``torch.optim.AdamW`` with ``foreach=False, fused=False`` and a per-parameter EMA loop. Written for clarity, not
speed; every shortcut of the fast path (shared first-block projections, query-only last block, fused optimizer,
``_foreach`` EMA...) must reproduce what this computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from openjepa.ijepa import IJEPA, patchify


def layer_norm(x, module):
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)


def linear(x, module):
    return x @ module.weight.t() + (module.bias if module.bias is not None else 0.0)


def attention(x, attn):
    """Explicit multi-head softmax attention."""
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    qkv = linear(x, attn.qkv).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(dim // heads), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return linear(out, attn.proj)


def block(x, blk):
    x = x + attention(layer_norm(x, blk.norm1), blk.attn)
    hidden = F.gelu(linear(layer_norm(x, blk.norm2), blk.mlp.fc1))
    return x + linear(hidden, blk.mlp.fc2)


def gather(x, idx):
    """``x[b, idx[b]]`` for ``x`` [B, N, D] and ``idx`` [B, K]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def encoder_forward(vit, images, idx=None):
    tokens = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=vit.patch_size)
    x = tokens.flatten(2).transpose(1, 2) + vit.pos_embed
    if idx is not None:
        x = gather(x, idx)
    for blk in vit.blocks:
        x = block(x, blk)
    return layer_norm(x, vit.norm)


def predictor_forward(pred, z, context_idx, target_idx):
    """One pass per target block, concatenated block-major."""
    batch = z.shape[0]
    pos = pred.predictor_pos_embed.expand(batch, -1, -1)
    ctx = linear(z, pred.predictor_embed) + gather(pos, context_idx)
    outputs = []
    for tgt in target_idx:
        queries = pred.mask_token + gather(pos, tgt)
        x = torch.cat([ctx, queries], dim=1)
        for blk in pred.predictor_blocks:
            x = block(x, blk)
        x = layer_norm(x, pred.predictor_norm)[:, ctx.shape[1] :]
        outputs.append(linear(x, pred.predictor_proj))
    return torch.cat(outputs, dim=0)


def reference_loss(model: IJEPA, images, context_idx, target_idx):
    with torch.no_grad():
        if model.target_type == "pixels":
            h = patchify(images, model.encoder.patch_size)
        else:
            h = encoder_forward(model.target_encoder, images)
        h = F.layer_norm(h, (h.shape[-1],))
        targets = torch.cat([gather(h, tgt) for tgt in target_idx], dim=0)
    z = encoder_forward(model.encoder, images, context_idx)
    predictions = predictor_forward(model.predictor, z, context_idx, target_idx)
    if model.loss_name == "mse":
        return F.mse_loss(predictions, targets)
    return F.smooth_l1_loss(predictions, targets)


def reference_optimizer(model: IJEPA) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.param_groups(), lr=0.0, betas=(0.9, 0.999), eps=1e-8, foreach=False, fused=False)


def reference_step(model: IJEPA, optimizer, images, context_idx, target_idx, lr, weight_decay, momentum):
    """Loss, backward, AdamW with this step's lr / weight decay, then a per-parameter EMA; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if not group.get("WD_exclude", False):
            group["weight_decay"] = weight_decay
    loss = reference_loss(model, images, context_idx, target_idx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for target, source in zip(model.target_encoder.parameters(), model.encoder.parameters()):
            target.mul_(momentum).add_(source, alpha=1.0 - momentum)
    return loss.detach()
