"""How a run shows its progress: a progress bar on a terminal, plain lines every few seconds elsewhere.

Without a terminal (CI, ``nohup``, SLURM logs) a progress bar's carriage-return frames would flood the log, so
:class:`Progress` prints one line every ``train.progress_seconds`` instead, e.g.
``step 120/1000 (12%) | epoch 2/10 | loss 0.4512 | lr 3.10e-04 | 512 img/s | 1m02s, ETA 7m48s``.
Both show the mean loss of the steps since the last update (``train.log_every`` steps on a terminal).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Progress of ``total`` steps from ``initial`` on; silent when ``enabled`` is false (processes other than 0)."""

    def __init__(self, total: int, initial: int, epochs: int, enabled: bool = True, log_every: int = 10,
                 seconds: float = 30.0, stream: TextIO | None = None, desc: str = "pretrain"):
        self.total, self.epochs, self.log_every, self.seconds = total, epochs, max(1, log_every), seconds
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=desc,
                        file=self.stream) if self.interactive else None
        self.started, self.first_step = time.monotonic(), initial
        self.last_line = self.started
        self._losses: list[float] = []
        self.alert: str | None = None

    def update(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float) -> None:
        """One training step done (``step`` counted from 1, ``epoch`` from 0)."""
        if not self.enabled:
            return
        self._losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
            if len(self._losses) >= self.log_every:
                alert = f" | {self.alert}" if self.alert else ""
                self.bar.set_postfix_str(f"ep {epoch + 1} loss {self._mean_loss():.4f} lr {lr:.2e} "
                                         f"{images_per_s:.0f} img/s{alert}", refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= self.seconds:
            self.last_line = now
            print(self._line(step, epoch, lr, images_per_s, now), file=self.stream, flush=True)

    def _mean_loss(self) -> float:
        mean = sum(self._losses) / len(self._losses)
        self._losses.clear()
        return mean

    def _line(self, step: int, epoch: int, lr: float, images_per_s: float, now: float) -> str:
        elapsed = now - self.started
        done = step - self.first_step
        eta = elapsed / done * (self.total - step) if done else 0.0
        return (f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%) | epoch {epoch + 1}/{self.epochs} "
                f"| loss {self._mean_loss():.4f} | lr {lr:.2e} | {images_per_s:.0f} img/s | {_duration(elapsed)}, "
                f"ETA {_duration(eta)}" + (f" | {self.alert}" if self.alert else ""))

    def replan(self, total: int, epochs: int) -> None:
        """The run's length changed (``train.fit_to_deadline``): ``total`` steps in ``epochs`` epochs."""
        self.total, self.epochs = total, epochs
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def flag(self, alert: str | None) -> None:
        """A short alert shown with every later update (e.g. "WARNING: collapse suspected"); None clears it."""
        self.alert = alert

    def write(self, message: str) -> None:
        """A message between updates (above the bar on a terminal, a plain line elsewhere)."""
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
