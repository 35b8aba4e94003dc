"""Learning-rate, weight-decay and EMA-momentum schedules as pure functions of the step.

Being pure functions (no internal counter), a run resumed at step ``k`` sees exactly the values of an
uninterrupted run, and any step's values can be looked up without replaying the earlier ones. The step may be
fractional: a run fitted to a deadline (``openjepa.train.deadline``) looks its steps up at re-spaced positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_cosine(step: float, warmup_steps: int, total_steps: int, start: float, peak: float, final: float) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine decay to ``final`` at
    ``total_steps`` (held at ``final`` afterwards)."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine(step: float, total_steps: int, start: float, final: float) -> float:
    """Cosine from ``start`` at step 0 to ``final`` at ``total_steps`` (held afterwards)."""
    progress = min(1.0, step / max(1, total_steps))
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fade_out(step: float, fade_steps: int | None) -> float:
    """A factor that falls by a half cosine from 1 at step 0 to 0 at ``fade_steps`` (held at 0 afterwards); 1
    throughout when ``fade_steps`` is None."""
    if fade_steps is None:
        return 1.0
    return cosine(step, fade_steps, 1.0, 0.0) if step < fade_steps else 0.0


def linear(step: float, total_steps: int, start: float, final: float) -> float:
    """Straight line from ``start`` at step 0 to ``final`` at ``total_steps`` (held afterwards)."""
    progress = min(1.0, step / max(1, total_steps))
    return start + (final - start) * progress


@dataclass(frozen=True)
class Schedules:
    """The schedules of an I-JEPA run: the paper's three (defaults: the released recipe's values) and, beyond the
    paper, the fade of the regulariser's weight (default: none, a constant weight).

    ``total_steps`` is ``epochs * iterations_per_epoch * ipe_scale`` as in the released code, where ``ipe_scale``
    > 1 stretches the schedules beyond the end of training.
    """

    total_steps: int
    warmup_steps: int
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema_start: float = 0.996
    ema_end: float = 1.0
    regularizer_fade: float | None = None  # the fraction of total_steps over which the regulariser fades out

    def lr_at(self, step: float) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.start_lr, self.lr, self.final_lr)

    def wd_at(self, step: float) -> float:
        return cosine(step, self.total_steps, self.weight_decay, self.final_weight_decay)

    def momentum_at(self, step: float) -> float:
        return linear(step, self.total_steps, self.ema_start, self.ema_end)

    def regularizer_factor_at(self, step: float) -> float:
        """What multiplies ``model.regularizer_weight`` at ``step``: 1 throughout, or fading to 0 by
        ``regularizer_fade * total_steps`` (see ``model.regularizer_fade``)."""
        if self.regularizer_fade is None:
            return 1.0
        return fade_out(step, max(1, round(self.regularizer_fade * self.total_steps)))

    def at(self, step: float) -> tuple[float, float, float]:
        """``(lr, weight_decay, ema_momentum)`` for ``step`` (0-based)."""
        return self.lr_at(step), self.wd_at(step), self.momentum_at(step)
