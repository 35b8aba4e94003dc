"""SIGTERM / SIGINT (what SLURM and Ctrl-C send) become a request to stop after the current step, so that the
trainer can write a checkpoint before exiting. A second Ctrl-C stops at once.

Both signals usually reach every process of the job, DataLoader workers included; :func:`shield_workers` makes
the workers ignore them, so that only the main process reacts and none dies under it before the checkpoint.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class StopRequest:
    """Context manager that turns the first SIGTERM/SIGINT into ``requested = True``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal: int | None = None
        self._previous: dict[int, object] = {}
        self._owner = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            # A forked DataLoader worker inherits this handler. Ignoring the signal there keeps the worker alive
            # (Ctrl-C and SLURM signal every process of the job): the main process stops the loop, saves, and
            # shuts its workers down itself, instead of dying of a "worker exited unexpectedly" error.
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        self.requested = True
        self.signal = signum
        name = signal.Signals(signum).name
        try:
            print(f"\nopenjepa: {name} received: finishing this step and saving a checkpoint "
                  f"(Ctrl-C again to stop without saving)", flush=True)
        except (RuntimeError, OSError):  # the signal landed inside another write to stdout, or stdout is gone
            pass

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    """A DataLoader ``worker_init_fn``: ignore SIGTERM and SIGINT in the worker, then run ``then``.

    torch makes its workers die of SIGTERM, and the main process then fails at once with "DataLoader worker ...
    is killed by signal" -- before it could save. Ignored, the signal is left to the main process, which stops
    after the step, saves, and shuts the workers down (they also exit by themselves if it dies).
    """
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if then is not None:
        then(worker_id)


def shield_workers(loader: Any) -> None:
    """Make the worker processes of a ``torch.utils.data.DataLoader`` ignore stop signals (before it first
    starts them); a ``worker_init_fn`` it already has still runs."""
    loader.worker_init_fn = functools.partial(ignore_stop_signals, then=loader.worker_init_fn)
