"""AdamW with layer-wise learning-rate decay (as in BEiT / MAE fine-tuning) for a :class:`ViTClassifier`.

Layers are numbered from the input: 0 is the patch embedding (and the position embedding, which is frozen),
``i + 1`` is block ``i``, and ``depth + 1`` is the final LayerNorm and the head. Layer ``l`` trains at ``lr *
layer_decay ** (depth + 1 - l)``: the head at the full rate, each block below it ``layer_decay`` times slower than
the one above, so the pretrained low-level features move least. For a depth-12 encoder and ``layer_decay=0.75``
the first block learns at 0.75^12 = 3 % of the head's rate.

Weight decay applies to the weight matrices (and convolution kernels) only; biases, LayerNorm parameters and the
position embedding are not decayed.
"""

from __future__ import annotations

import re

import torch

from ..models.classifier import ViTClassifier


def layer_id(name: str, depth: int) -> int:
    """The layer of a :class:`ViTClassifier` parameter (see the module docstring)."""
    if name.startswith(("encoder.patch_embed.", "encoder.pos_embed")):
        return 0
    match = re.match(r"encoder\.blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith(("encoder.norm.", "head.")):
        return depth + 1
    raise ValueError(f"{name} is not a parameter of a ViTClassifier")


def lr_scale(name: str, depth: int, layer_decay: float) -> float:
    """The factor of the peak learning rate that parameter ``name`` trains at."""
    return layer_decay ** (depth + 1 - layer_id(name, depth))


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies: matrices and kernels, not biases, norms or the position embedding."""
    return param.ndim >= 2 and not name.endswith("pos_embed")


def param_groups(model: ViTClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """One AdamW group per (layer, decayed or not), each with its ``lr_scale``, ``layer`` and parameter
    ``names``. Frozen parameters (the position embedding) are left out."""
    depth = model.encoder.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, decayed = layer_id(name, depth), decays(name, param)
        group = groups.setdefault((layer, decayed), {
            "params": [], "names": [], "layer": layer, "lr_scale": layer_decay ** (depth + 1 - layer),
            "weight_decay": weight_decay if decayed else 0.0,
        })
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def make_finetune_optimizer(model: ViTClassifier, weight_decay: float, layer_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999) over :func:`param_groups`; :func:`set_lr` sets each step's rates."""
    return torch.optim.AdamW(param_groups(model, weight_decay, layer_decay), lr=0.0, betas=(0.9, 0.999), eps=1e-8)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """This step's peak rate ``lr`` times each group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
