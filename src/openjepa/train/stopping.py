"""Why a run stops, as a value: the epochs ran out (``completed``), a stop signal (``interrupted``), or a limit
of the ``train`` section (``time_limit``: ``train.max_minutes``, ``max_steps``: ``train.max_steps``). Pretraining
and fine-tuning decide it the same way, from flags read once per step on every process."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..config_sections import TrainConfig

COMPLETED, INTERRUPTED, TIME_LIMIT, MAX_STEPS = "completed", "interrupted", "time_limit", "max_steps"


def limit_reached(train: TrainConfig, step: int) -> str | None:
    """``max_steps`` when ``step`` steps reach ``train.max_steps``, ``time_limit`` for a time limit of 0 (a run
    resumed at its limit takes no step), else None."""
    if train.max_steps is not None and step >= train.max_steps:
        return MAX_STEPS
    if train.max_minutes is not None and train.max_minutes <= 0:
        return TIME_LIMIT
    return None


def past_deadline(started: float, max_minutes: float | None) -> bool:
    """Whether ``max_minutes`` have passed since ``started`` (a ``time.monotonic()`` reading)."""
    return max_minutes is not None and (time.monotonic() - started) / 60 >= max_minutes


def stop_reason(flags: Sequence[bool], train: TrainConfig, step: int, single_process_request: bool = False
                ) -> str | None:
    """Why to stop after ``step`` steps (None: go on), given ``flags`` = (stop requested, deadline passed) as the
    step's sync read them (each true on every process when true on any). ``single_process_request``: a request
    that came after that sync, in a run of one process (which has no other process to agree with)."""
    requested, late = flags
    if requested or single_process_request:
        return INTERRUPTED
    limit = limit_reached(train, step)
    return limit if limit is not None else (TIME_LIMIT if late else None)
