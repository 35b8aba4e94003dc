"""One I-JEPA optimisation step, shared by the trainer and the benchmarks.

``loss -> backward -> (clip) -> AdamW step with this step's lr / weight decay -> EMA update of the target encoder``.

The step reads one thing back to the host: the loss (and the gradient norm, when clipping computes it), to decide
whether the update may be applied. That is its one host sync; ``exchange`` lets a caller fold its own per-step
questions into it (the trainer adds its stop and deadline flags, and the mean over processes).

:func:`accumulated_step` is the same step over several micro-batches (gradient accumulation): each micro-batch's
loss is divided by their number before its backward, so the summed gradients are those of the mean loss over the
whole batch; DDP synchronises the gradients on the last micro-batch only (``no_sync`` on the others); the host
sync, the optimizer step and the EMA update happen once, after the last backward.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .ijepa import IJEPA

# ``exchange(values)``: the step's per-step values (a 1-D device tensor: loss, gradient norm) as host floats,
# after whatever reduction across processes the caller needs. The default reads them as they are.
Exchange = Callable[[torch.Tensor], list[float]]
# One micro-batch of a step: images [B, C, H, W], context indices [B, Kc], target indices [M, B, Kt].
MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def unwrap(model: nn.Module) -> IJEPA:
    """The :class:`IJEPA` inside a DDP / ``torch.compile`` wrapper."""
    while not isinstance(model, IJEPA):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected an IJEPA model, got {type(model).__name__}")
        model = inner
    return model


def _ddp_of(model: nn.Module) -> DistributedDataParallel | None:
    """The DistributedDataParallel wrapper among ``model``'s wrappers (DDP, ``torch.compile``), if any."""
    while not isinstance(model, IJEPA):
        if isinstance(model, DistributedDataParallel):
            return model
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            return None
    return None


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


def _seed_generators(seed: int, device: torch.device) -> None:
    """Seed the global generators a step on ``device`` draws from: the CPU's, and the device's own."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


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
    return _step(model, optimizer, [(images, context_idx, target_idx)], lr, weight_decay, momentum, grad_clip,
                 autocast_dtype, check_finite, scaler, exchange, reduce_loss)


def accumulated_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[MicroBatch],
    lr: float,
    weight_decay: float,
    momentum: float,
    grad_clip: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    check_finite: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    exchange: Exchange | None = None,
    seeds: Sequence[int] | None = None,
) -> StepResult:
    """One optimisation step over ``micro_batches`` (gradient accumulation; see the module docstring).

    The loss of the step is the mean of the micro-batches' losses: the mean loss of the whole batch when the
    micro-batches are of equal size and share their mask lengths (what the trainer's loader gives). Each
    micro-batch is moved to the model's device just before its forward, so only one is there at a time.
    ``seeds``: one per micro-batch; the global generators of the CPU and of the model's device are seeded with it
    before the micro-batch's forward, so that random layers (drop-path) draw from a stream that depends on where the
    micro-batch sits in training, not on what ran before.
    The other arguments are :func:`train_step`'s.
    """
    return _step(model, optimizer, micro_batches, lr, weight_decay, momentum, grad_clip, autocast_dtype,
                 check_finite, scaler, exchange, None, seeds)


def _step(model, optimizer, micro_batches, lr, weight_decay, momentum, grad_clip, autocast_dtype, check_finite,
          scaler, exchange, reduce_loss, seeds=None) -> StepResult:
    count = len(micro_batches)
    if count < 1:
        raise ValueError("a step needs at least one micro-batch")
    if seeds is not None and len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} micro-batches")
    set_hyperparameters(optimizer, lr, weight_decay)
    ijepa = unwrap(model)
    device = next(ijepa.parameters()).device
    ddp = _ddp_of(model) if count > 1 else None
    optimizer.zero_grad(set_to_none=True)
    total: torch.Tensor | None = None
    for i, (images, context_idx, target_idx) in enumerate(micro_batches):
        images = images.to(device, non_blocking=True)
        context_idx = context_idx.to(device, non_blocking=True)
        target_idx = target_idx.to(device, non_blocking=True)
        if seeds is not None:
            _seed_generators(seeds[i], device)
        # DDP all-reduces the gradients during the last micro-batch's backward only; the others accumulate locally.
        sync = ddp.no_sync() if ddp is not None and i < count - 1 else contextlib.nullcontext()
        autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                    else contextlib.nullcontext())
        with sync:
            with autocast:
                loss = model(images, context_idx, target_idx)
            part = loss / count if count > 1 else loss
            (scaler.scale(part) if scaler is not None else part).backward()
        total = part.detach() if total is None else total + part.detach()
    loss = reduce_loss(total) if reduce_loss is not None else total
    params = list(ijepa.parameters()) if grad_clip else []
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
    ijepa.update_target(momentum)
    return StepResult(loss, grad_norm, read)
