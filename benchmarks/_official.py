"""Run the official I-JEPA code (facebookresearch/ijepa) side by side with openjepa, for the benchmarks only.

Nothing of the official code is copied here: the benchmarks take the path of a checkout at run time, import the
few modules they need from it, and drive them the way its ``src/train.py`` does. Only modules that import cleanly
without torchvision are touched (``src.models.vision_transformer``, ``src.masks.multiblock``, ``src.masks.utils``,
``src.utils.tensors``); its training loop imports torchvision-dependent code, so :func:`official_step` re-creates
the body of its ``train_step`` from those pieces:

* target: ``target_encoder(imgs)`` -> ``F.layer_norm`` -> ``apply_masks(h, masks_pred)`` ->
  ``repeat_interleave_batch(h, B, repeat=len(masks_enc))``, under ``torch.no_grad``;
* context: ``encoder(imgs, masks_enc)`` -> ``predictor(z, masks_enc, masks_pred)``;
* ``F.smooth_l1_loss(z, h)``, ``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad()``;
* EMA: ``param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)`` over every parameter pair;
* the optimizer is ``torch.optim.AdamW`` over its four parameter groups (see ``src/helper.py: init_opt``), with
  torch's default implementation choice, exactly as the official ``init_opt`` builds it.

Under ``--dtype bf16`` (GPU) the forward runs under ``torch.autocast(dtype=torch.bfloat16)`` as the official
``use_bfloat16`` does; the official also wraps backward in a ``GradScaler``, which is a no-op in effect for bf16 and
is left out of both implementations.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


class OfficialCheckoutError(RuntimeError):
    """The given path is not a usable checkout of facebookresearch/ijepa."""


@dataclass
class OfficialModules:
    vit: Any  # src.models.vision_transformer
    multiblock: Any  # src.masks.multiblock
    apply_masks: Any
    repeat_interleave_batch: Any


def import_official(path: str | Path) -> OfficialModules:
    """Import the needed official modules from a checkout (its root holds ``src/``)."""
    root = Path(path).expanduser().resolve()
    if not (root / "src" / "models" / "vision_transformer.py").is_file():
        raise OfficialCheckoutError(
            f"{root} does not look like a checkout of facebookresearch/ijepa (no src/models/vision_transformer.py); "
            "pass the folder that contains its src/ directory"
        )
    loaded = sys.modules.get("src")
    if loaded is not None and Path(getattr(loaded, "__path__", [""])[0]).resolve() != root / "src":
        raise OfficialCheckoutError(f"another package named 'src' is already imported from {loaded.__path__}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    vit = importlib.import_module("src.models.vision_transformer")
    multiblock = importlib.import_module("src.masks.multiblock")
    masks_utils = importlib.import_module("src.masks.utils")
    tensors = importlib.import_module("src.utils.tensors")
    return OfficialModules(vit, multiblock, masks_utils.apply_masks, tensors.repeat_interleave_batch)


def official_revision(path: str | Path) -> str | None:
    """The git commit of the checkout, when it is a git work tree (an exported tree has none)."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass
class OfficialSetup:
    encoder: torch.nn.Module
    predictor: torch.nn.Module
    target_encoder: torch.nn.Module
    optimizer: torch.optim.Optimizer
    collator: Any
    modules: OfficialModules


def build_official(
    mods: OfficialModules,
    arch: str,
    patch_size: int,
    img_size: int,
    pred_depth: int,
    pred_emb_dim: int,
    mask_kwargs: dict,
    device: torch.device,
    depth: int | None = None,
) -> OfficialSetup:
    """Encoder, predictor, target encoder, AdamW and collator as the official ``init_model`` / ``init_opt`` /
    ``MaskCollator`` build them (``depth`` overrides the preset's depth when given)."""
    import copy

    kwargs = {"img_size": [img_size], "patch_size": patch_size}
    if depth is not None:
        kwargs["depth"] = depth
    if depth is not None:
        encoder = _official_vit_with_depth(mods, arch, kwargs)
    else:
        encoder = getattr(mods.vit, arch)(**kwargs)
    predictor = mods.vit.vit_predictor(
        num_patches=encoder.patch_embed.num_patches,
        embed_dim=encoder.embed_dim,
        predictor_embed_dim=pred_emb_dim,
        depth=pred_depth,
        num_heads=encoder.num_heads,
    )
    encoder.to(device)
    predictor.to(device)
    target_encoder = copy.deepcopy(encoder)
    for p in target_encoder.parameters():
        p.requires_grad = False

    def split(module, decay):
        return [p for n, p in module.named_parameters() if (("bias" not in n) and (len(p.shape) != 1)) == decay]

    groups = [
        {"params": split(encoder, True)},
        {"params": split(predictor, True)},
        {"params": split(encoder, False), "WD_exclude": True, "weight_decay": 0},
        {"params": split(predictor, False), "WD_exclude": True, "weight_decay": 0},
    ]
    optimizer = torch.optim.AdamW(groups)
    collator = mods.multiblock.MaskCollator(input_size=(img_size, img_size), patch_size=patch_size, **mask_kwargs)
    return OfficialSetup(encoder, predictor, target_encoder, optimizer, collator, mods)


def _official_vit_with_depth(mods: OfficialModules, arch: str, kwargs: dict):
    """The official presets hard-code their depth; build the same preset through the class with another depth."""
    widths = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12), "vit_large": (1024, 16),
              "vit_huge": (1280, 16)}
    if arch not in widths:
        raise OfficialCheckoutError(f"no depth override for the official {arch}")
    from functools import partial

    dim, heads = widths[arch]
    return mods.vit.VisionTransformer(
        embed_dim=dim, num_heads=heads, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kwargs,
    )


def official_collate(setup: OfficialSetup, samples: list[tuple]):
    """The official collator on ``samples``: ``(collated_batch, masks_enc, masks_pred)`` (lists of [B, K])."""
    return setup.collator(samples)


def official_step(
    setup: OfficialSetup,
    imgs: torch.Tensor,
    masks_enc: list[torch.Tensor],
    masks_pred: list[torch.Tensor],
    lr: float,
    wd: float,
    momentum: float,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """One official training step (see the module docstring); returns the loss as a float, like the original."""
    mods = setup.modules
    for group in setup.optimizer.param_groups:  # what its WarmupCosineSchedule / CosineWDSchedule write
        group["lr"] = lr
        if not group.get("WD_exclude", False):
            group["weight_decay"] = wd
    autocast = (
        torch.autocast(imgs.device.type, dtype=autocast_dtype) if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        with torch.no_grad():
            h = setup.target_encoder(imgs)
            h = F.layer_norm(h, (h.size(-1),))
            batch = len(h)
            h = mods.apply_masks(h, masks_pred)
            h = mods.repeat_interleave_batch(h, batch, repeat=len(masks_enc))
        z = setup.encoder(imgs, masks_enc)
        z = setup.predictor(z, masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
    loss.backward()
    setup.optimizer.step()
    setup.optimizer.zero_grad()
    with torch.no_grad():
        for param_q, param_k in zip(setup.encoder.parameters(), setup.target_encoder.parameters()):
            param_k.data.mul_(momentum).add_((1.0 - momentum) * param_q.detach().data)
    return float(loss.detach())
