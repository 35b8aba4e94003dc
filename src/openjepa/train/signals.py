"""SIGTERM / SIGINT (what SLURM and Ctrl-C send) become a request to stop after the current step, so that the
trainer can write a checkpoint before exiting. A second Ctrl-C stops at once.

Both signals usually reach every process of the job, DataLoader workers included; :func:`shield_workers` makes
the workers ignore them, so that only the main process reacts and none dies under it before the checkpoint.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any


class StopRequest:
    """Context manager that turns the first SIGTERM/SIGINT into ``requested = True`` (``requested_at``: when, on
    ``time.monotonic``'s clock). Later SIGTERMs change nothing (under SLURM a worker may get one from the scheduler
    and one from torchrun); a SIGINT after the first request stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.requested_at: float | None = None
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
        if self.requested:
            return
        self.requested, self.requested_at = True, time.monotonic()
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


def shield_workers(loader: Any) -> Callable[[], None]:
    """Make the worker processes of a ``torch.utils.data.DataLoader`` outlive stop signals; returns ``release``.

    torch makes its workers die of SIGTERM, and the main process then fails at once with "DataLoader worker ...
    is killed by signal" -- before it could save. Shielded workers ignore SIGINT, and SIGTERM until
    ``release()``: the signal is left to the main process, which stops after the step, saves, and shuts the
    workers down (they also exit by themselves if it dies). After ``release()`` -- call it once the workers are
    no longer needed; it also runs at interpreter exit -- SIGTERM ends them again, as multiprocessing's
    ``terminate()`` at exit expects (otherwise a worker still alive then would make the exit wait forever).
    Call before the loader first starts its workers; a ``worker_init_fn`` it already has still runs.
    """
    if not loader.num_workers:
        return lambda: None
    context = loader.multiprocessing_context or multiprocessing.get_context()
    released = context.Event()
    loader.worker_init_fn = functools.partial(_shielded_worker, released=released, then=loader.worker_init_fn)
    atexit.register(released.set)  # runs before multiprocessing's own exit hook, which terminates workers

    def release() -> None:
        released.set()
        atexit.unregister(released.set)

    return release


def _shielded_worker(worker_id: int, released: Any, then: Callable[[int], None] | None = None) -> None:
    """``worker_init_fn`` of :func:`shield_workers` (module level, so that spawned workers can unpickle it)."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if released.is_set():  # the main process is done with us: die of it, as SIGTERM normally does
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)
    if then is not None:
        then(worker_id)
