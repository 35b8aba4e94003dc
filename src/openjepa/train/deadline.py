"""Fitting a run to its deadline (``train.fit_to_deadline``): the run's length is re-planned as it goes, from the
step time the loop measures, so that the learning-rate, weight-decay and EMA schedules end when
``train.max_minutes`` runs out instead of being cut short by it (a slower machine) or ending early (a faster one).

Why re-plan rather than plan once: the speed of a shared or thermally limited machine changes from minute to
minute (on a 2-core cloud CPU a 20-step calibration has missed the loop's mean speed by 25-40 %), so a length
fixed at the start either leaves minutes unused or stops the run with its learning rate still high.

The schedules are pure functions of a *schedule position*; :class:`ScheduleFit` maps training steps to positions,
piecewise linearly. A re-plan at step ``s`` keeps every position up to ``s`` and re-spaces the rest so that the
run's new last step lands on the schedules' end: the values stay continuous, and a resumed run, which reads the
map from its checkpoint, sees the same values at the same steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

from ..config import RunConfig

# Shares of train.max_minutes at which the length is re-planned: early ones correct the first guess quickly, later
# ones follow the machine's speed as it changes.
REPLAN_AT = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Share of train.max_minutes kept free after the last step: the last checkpoint, the monitor and the curves.
RESERVE = 0.03


@dataclass
class ScheduleFit:
    """Where the schedules stand at each step of a run whose length is fitted to a deadline.

    ``knots`` are ``(step, position)`` pairs fixed by earlier re-plans (the first one where the run started); from
    the last knot on, positions advance evenly so that step ``end_step`` -- the run's last -- is at
    ``schedule_end``.
    """

    end_step: int
    schedule_end: float
    knots: list[tuple[int, float]] = field(default_factory=lambda: [(0, 0.0)])

    def position(self, step: int) -> float:
        """The schedule position (a fractional "step" of the schedules) of training step ``step``."""
        for (s0, p0), (s1, p1) in pairwise(self.knots):
            if s0 <= step < s1:
                return p0 + (step - s0) * (p1 - p0) / (s1 - s0)
        s0, p0 = self.knots[-1]
        if self.end_step <= s0:
            return self.schedule_end
        return min(self.schedule_end, p0 + (step - s0) * (self.schedule_end - p0) / (self.end_step - s0))

    def replan(self, step: int, end_step: int) -> ScheduleFit:
        """The map with the run ending after ``end_step`` steps (at least one more than ``step``), the positions up
        to ``step`` unchanged."""
        end_step = max(end_step, step + 1)
        here = (step, self.position(step))
        knots = [k for k in self.knots if k[0] < step] + [here]
        return ScheduleFit(end_step, self.schedule_end, knots)

    def state_dict(self) -> dict:
        return {"end_step": self.end_step, "schedule_end": self.schedule_end,
                "knots": [[int(s), float(p)] for s, p in self.knots]}

    @classmethod
    def from_state(cls, state: dict) -> ScheduleFit:
        return cls(int(state["end_step"]), float(state["schedule_end"]),
                   [(int(s), float(p)) for s, p in state["knots"]])

    @classmethod
    def starting_at(cls, step: int, end_step: int, schedule_end: float) -> ScheduleFit:
        """A map for a run that is at ``step`` now (a resumed one: position = step so far) and is first guessed to
        end after ``end_step`` steps, where the schedules are at ``schedule_end``."""
        return cls(max(end_step, step + 1), schedule_end, [(step, float(min(step, schedule_end)))])


class DeadlinePlanner:
    """When to re-plan, and how many steps fit before the deadline at the speed measured since the loop started
    (monitor runs and checkpoint writes included: they recur).

    ``started``: when the deadline's clock started (``train.max_minutes`` counts from there); ``loop_started``: when
    the first step began (the speed is measured from there); ``end_s``: the work after the last step (the last
    monitor run: about as long as the one before training), kept free together with ``RESERVE``.
    """

    def __init__(self, max_minutes: float, started: float, first_step: int, loop_started: float | None = None,
                 end_s: float = 0.0):
        self.budget_s, self.started, self.first_step = max_minutes * 60.0, started, first_step
        self.loop_started = started if loop_started is None else loop_started
        self.reserve_s = RESERVE * self.budget_s + end_s
        self.next = 0  # index into REPLAN_AT

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def due(self, now: float | None = None) -> bool:
        """Whether the next re-planning share of the budget has passed."""
        return self.next < len(REPLAN_AT) and self.elapsed(now) >= REPLAN_AT[self.next] * self.budget_s

    def advance(self, now: float | None = None) -> None:
        """Move past every re-planning share already passed (one re-plan for several, after a long monitor run)."""
        share = self.elapsed(now) / self.budget_s
        while self.next < len(REPLAN_AT) and REPLAN_AT[self.next] <= share:
            self.next += 1

    def seconds_per_step(self, step: int, now: float | None = None) -> float | None:
        done = step - self.first_step
        now = time.monotonic() if now is None else now
        return (now - self.loop_started) / done if done > 0 else None

    def steps_that_fit(self, step: int, now: float | None = None) -> int:
        """The run's last step if it goes on at the speed measured so far until the deadline (less the reserve)."""
        per_step = self.seconds_per_step(step, now)
        if per_step is None:
            return step + 1
        left = self.budget_s - self.reserve_s - self.elapsed(now)
        return step + max(1, math.floor(left / per_step))


class RunLength:
    """How long a run is and where its schedules stand at each step: the recipe's length (``optim.epochs``), or a
    length fitted to ``train.max_minutes`` (``train.fit_to_deadline``) and re-planned as the run goes. A run
    resumed from a fitted checkpoint keeps its map (and, without ``fit_to_deadline``, its length)."""

    def __init__(self, config: RunConfig, steps_per_epoch: int, step: int, saved: dict | None = None):
        self.steps_per_epoch, self.recipe_epochs = steps_per_epoch, config.optim.epochs
        self.fitting = config.train.fit_to_deadline
        self.fit = self._first_fit(config, step, saved)  # None: the recipe's length, the schedules' own steps
        self.planner: DeadlinePlanner | None = None  # created when the loop starts
        self.replans: list[dict] = []

    def _first_fit(self, config: RunConfig, step: int, saved: dict | None) -> ScheduleFit | None:
        if saved is not None:
            fit = ScheduleFit.from_state(saved)
            return fit.replan(step, fit.end_step) if self.fitting else fit  # a new deadline: re-planned soon
        if not self.fitting:
            return None
        o = config.optim
        planned = o.epochs * self.steps_per_epoch
        # The guess (train.max_steps, else all epochs) ends where the recipe's schedules end.
        return ScheduleFit.starting_at(step, config.train.max_steps or planned, min(1.0, o.ipe_scale) * planned)

    @property
    def steps(self) -> int:
        """The run's length in steps (the schedules may span more)."""
        return self.fit.end_step if self.fit is not None else self.recipe_epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        """The run's number of epochs: the recipe's, or as many as the fitted length reaches."""
        return self.recipe_epochs if self.fit is None else math.ceil(self.fit.end_step / self.steps_per_epoch)

    def position(self, step: int) -> float:
        """Where the schedules stand at ``step``."""
        return step if self.fit is None else self.fit.position(step)

    def ended(self, step: int) -> bool:
        """Whether a run of fitted length took its last step."""
        return self.fit is not None and step >= self.fit.end_step

    def start(self, max_minutes: float | None, started: float, step: int, loop_started: float, end_s: float) -> None:
        """The loop starts (see :class:`DeadlinePlanner`); a fitted run begins to follow its deadline."""
        if self.fitting:
            self.planner = DeadlinePlanner(max_minutes, started, step, loop_started, end_s)

    def due(self) -> bool:
        return self.planner is not None and self.planner.due()

    def replan(self, step: int, agree: Callable[[int], int]) -> str | None:
        """Re-plan at ``step`` (``agree``: the value every process takes from each one's estimate); a message when
        the length changed by more than 1 % of what was left."""
        now = time.monotonic()
        before = self.fit.end_step
        self.fit = self.fit.replan(step, agree(self.planner.steps_that_fit(step, now)))
        self.planner.advance(now)
        per_step = self.planner.seconds_per_step(step, now)
        self.replans.append({"step": step, "elapsed_s": round(self.planner.elapsed(now), 1),
                             "seconds_per_step": round(per_step, 4) if per_step else None,
                             "end_step": self.fit.end_step})
        if abs(self.fit.end_step - before) <= 0.01 * max(1, before - step):
            return None
        return (f"fit to deadline: {per_step:.3f} s/step so far, so the run now ends after {self.fit.end_step} "
                f"steps (was {before}), where the schedules end")

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps (``schedule_fit``), None for the recipe's length."""
        return None if self.fit is None else self.fit.state_dict()

    def record(self) -> dict | None:
        """The fitted length and every re-plan, for the run's result."""
        if self.fit is None:
            return None
        return {"end_step": self.fit.end_step, "schedule_end": self.fit.schedule_end, "replans": self.replans}

    def describe(self, max_minutes: float | None) -> str:
        """The run's length for the run header."""
        if self.fit is None:
            return f"{self.recipe_epochs} epochs = {self.steps} steps"
        if not self.fitting:
            return f"{self.steps} steps (the length the resumed run was fitted to)"
        return f"{self.steps} steps to begin with (fitted to train.max_minutes={max_minutes:g} as the run goes)"
