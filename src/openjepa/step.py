"""One I-JEPA optimisation step, shared by the trainer and the benchmarks.

``loss -> backward -> (clip) -> AdamW step with this step's lr / weight decay -> EMA update of the target encoder``.

The step reads one thing back to the host: the loss (and the gradient norm, when clipping computes it), to decide
whether the update may be applied. That is its one host sync; ``exchange`` lets a caller fold its own per-step
questions into it (the trainer adds its stop and deadline flags, and the mean over processes).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .ijepa import IJEPA

# ``exchange(values)``: the step's per-step values (a 1-D device tensor: loss, gradient norm) as host floats,
# after whatever reduction across processes the caller needs. The default reads them as they are.
Exchange = Callable[[torch.Tensor], list[float]]


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
    grad_norm: torch.Tensor | None  # total gradient norm before clipping (None: no clipping, nothing computed)
    read: list[float] | None = None  # [loss, grad_norm or nan] as read by the step's host sync (None: no sync)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


def _total_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients together, as ``clip_grad_norm_`` computes it (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _clip(parameters: list[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale the gradients to ``max_norm`` when ``total_norm`` exceeds it, as ``clip_grad_norm_`` does."""
    if hasattr(nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6
        nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)
        return
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    torch._foreach_mul_([p.grad for p in parameters if p.grad is not None], scale)


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
    check_finite: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    exchange: Exchange | None = None,
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepResult:
    """Run one step. ``model`` may be the plain :class:`IJEPA` or a DDP / compiled wrapper of it.

    With ``check_finite`` a NaN/inf loss raises :class:`NonFiniteLossError` *before* any weight is touched; the
    loss is read through ``exchange`` (see :data:`Exchange`; e.g. a mean over processes, so that every process
    of a distributed run takes the same decision). ``scaler`` enables fp16 loss scaling. ``reduce_loss`` is
    deprecated: pass ``exchange``.
    """
    if reduce_loss is not None:
        warnings.warn("train_step(reduce_loss=...) is deprecated; pass exchange=... (see openjepa.step.Exchange)",
                      DeprecationWarning, stacklevel=2)
    set_hyperparameters(optimizer, lr, weight_decay)
    autocast = (
        torch.autocast(images.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        loss = model(images, context_idx, target_idx)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    loss = reduce_loss(loss.detach()) if reduce_loss is not None else loss.detach()
    params = list(unwrap(model).parameters()) if grad_clip else []
    # Without loss scaling the norm is taken before the sync and read with the loss; a scaled one means nothing
    # until it is unscaled, which touches the scaler's state and so waits for the finite check.
    grad_norm = _total_norm(params) if grad_clip and scaler is None else None
    read = None
    if check_finite:
        # After backward, which touches no weight (nor any scaler state): the step's one host sync then waits for
        # forward and backward together, instead of idling a GPU between them.
        norm = grad_norm if grad_norm is not None else torch.full((), math.nan, device=loss.device)
        values = torch.stack([loss.float(), norm.float()])
        read = exchange(values) if exchange is not None else values.tolist()
        if not math.isfinite(read[0]):
            raise NonFiniteLossError(f"loss is {read[0]}")
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        grad_norm = grad_norm if grad_norm is not None else _total_norm(params)
        _clip(params, grad_clip, grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    unwrap(model).update_target(momentum)
    return StepResult(loss, grad_norm, read)
