"""One I-JEPA optimisation step, shared by the trainer and the benchmarks.

``loss -> backward -> (clip) -> AdamW step with this step's lr / weight decay -> EMA update of the target encoder``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .ijepa import IJEPA, StepStats


def unwrap(model: nn.Module) -> IJEPA:
    """The :class:`IJEPA` inside a DDP / ``torch.compile`` wrapper."""
    while not isinstance(model, IJEPA):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected an IJEPA model, got {type(model).__name__}")
        model = inner
    return model


def make_optimizer(model: nn.Module, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (the schedules set lr and weight decay every step).

    ``fused`` defaults to the fused kernel wherever this torch build has one for the parameters' device.
    """
    groups = unwrap(model).param_groups()
    if fused is None:
        fused = _fused_available(groups[0]["params"][0].device)
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def _fused_available(device: torch.device) -> bool:
    try:
        probe = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([probe], fused=True)
        return True
    except (RuntimeError, ValueError):
        return False


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Write this step's lr into every group and its weight decay into the groups that take decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if not group.get("WD_exclude", False):
            group["weight_decay"] = weight_decay


@dataclass
class StepResult:
    loss: torch.Tensor  # detached scalar; call float() only when the value is needed (it synchronises a GPU)
    grad_norm: torch.Tensor | None
    stats: StepStats | None


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    context_idx: torch.Tensor,
    target_idx: torch.Tensor,
    lr: float,
    weight_decay: float,
    momentum: float,
    grad_clip: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    return_stats: bool = False,
    check_finite: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepResult:
    """Run one step. ``model`` may be the plain :class:`IJEPA` or a DDP / compiled wrapper of it.

    With ``check_finite`` a NaN/inf loss raises :class:`NonFiniteLossError` *before* any weight is touched.
    ``reduce_loss`` (e.g. a mean over processes) gives the value that is checked and reported, so that every
    process of a distributed run takes the same decision. ``scaler`` enables fp16 loss scaling.
    """
    set_hyperparameters(optimizer, lr, weight_decay)
    autocast = (
        torch.autocast(images.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        out = model(images, context_idx, target_idx, return_stats=return_stats)
    loss, stats = out if return_stats else (out, None)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    # Checked after backward, which touches no weight (nor any scaler state): the step's one host sync (``item``)
    # then waits for forward and backward together, instead of idling a GPU between them.
    reported = reduce_loss(loss.detach()) if reduce_loss is not None else loss.detach()
    if check_finite and not math.isfinite(reported.item()):
        raise NonFiniteLossError(f"loss is {reported.item()}")
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if grad_clip:
        grad_norm = nn.utils.clip_grad_norm_(unwrap(model).parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    unwrap(model).update_target(momentum)
    return StepResult(reported, grad_norm, stats)
