"""What surrounds a training loop, pretraining's and fine-tuning's alike: stop signals turned into a request, the
data loader's workers shielded from them, and the clean-up at the end (also when the loop fails)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from torch.utils.data import DataLoader

from ..data.bad_files import BadFileTracker
from .progress import Progress
from .run_log import RunLog
from .runtime import Runtime
from .signals import StopRequest, shield_workers


@contextmanager
def loop_shell(loader: DataLoader, progress: Progress, log: RunLog | None, bad_files: BadFileTracker,
               runtime: Runtime) -> Iterator[StopRequest]:
    """``with loop_shell(...) as stop:`` around a training loop and the checkpoint it saves when it stops early:
    SIGTERM / SIGINT set ``stop.requested``, and reach this process only (the loader's workers ignore them). At
    the end, also on an error, the workers are released, the progress display and the run log closed, and the
    unreadable files met listed once (process 0; not again when the error that ends the run lists them)."""
    release_workers = shield_workers(loader)
    stop = StopRequest()
    try:
        with stop:
            yield stop
    finally:
        release_workers()
        progress.close()
        if log is not None:
            log.close()
        error = sys.exc_info()[1]
        summary = bad_files.summary() if runtime.is_main else ""
        if summary and summary not in (str(error) if error is not None else ""):
            print(summary, flush=True)
