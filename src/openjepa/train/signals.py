"""SIGTERM / SIGINT (what SLURM and Ctrl-C send) become a request to stop after the current step, so that the
trainer can write a checkpoint before exiting. A second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Context manager that turns the first SIGTERM/SIGINT into ``requested = True``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        self.requested = True
        self.signal = signum
        name = signal.Signals(signum).name
        print(f"\nopenjepa: {name} received: finishing this step and saving a checkpoint "
              f"(Ctrl-C again to stop without saving)", flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
