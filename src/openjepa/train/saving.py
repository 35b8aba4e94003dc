"""The trainer's checkpoints, written in the background by process 0 (see :mod:`openjepa.checkpoint_writer`).

:class:`RunCheckpoints` keeps the bookkeeping the trainer needs around a
:class:`~openjepa.checkpoint_writer.CheckpointWriter`:

* which step the newest *complete* checkpoint holds (``saved_step``: what ``--resume`` would continue from), and
  which one is being written;
* a failed background write, reported as one :class:`~openjepa.errors.CheckpointError` that says which save
  failed, why, at which step training stopped and which checkpoint ``--resume`` continues from;
* when a save is due by the clock (``train.checkpoint_minutes``).

Periodic saves snapshot every tensor (training goes on changing the weights); a save made once training has
stopped writes the CPU tensors where they are (no second copy in host memory). A save made after a stop signal
runs in a daemon thread, so that a run whose grace period ran out can exit without it: the rename never happened,
the previous checkpoint is in place, and the next start removes the temporary file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_writer import CheckpointWriter
from ..errors import CheckpointError
from ..run_folder import LATEST, epoch_checkpoint_name


class RunCheckpoints:
    """Background checkpoint writes of one run (a writer on process 0 only; the others keep the bookkeeping)."""

    def __init__(self, run_dir: Path, writes: bool, device: torch.device, saved_step: int | None):
        self.run_dir = run_dir
        # Pinned host buffers are slow to allocate (seconds for a ViT-H state): on a GPU they are kept from one
        # save to the next. On a CPU the snapshot is the second copy of the state; it is freed after each write.
        self.writer = CheckpointWriter(keep_buffers=device.type == "cuda") if writes else None
        self.saved_step = saved_step  # the step of the newest complete checkpoint (None: none yet)
        self.pending_step: int | None = None  # the step being written
        self.last_start = time.monotonic()
        # Told how long the first write of the run took, and the write of a stop (what a grace period must allow).
        self.report: Callable[[str], None] = lambda line: None
        self._reported = False
        self._announce = False

    @property
    def latest(self) -> Path:
        return self.run_dir / LATEST

    def due(self, minutes: float | None) -> bool:
        """Whether ``minutes`` have passed since the last save started (or since the run started)."""
        return minutes is not None and (time.monotonic() - self.last_start) / 60 >= minutes

    def start(self, state: dict[str, Any], step: int, keep_epoch: int | None = None, stopped: bool = False,
              signalled: bool = False, timeout: float | None = None) -> bool:
        """Snapshot ``state`` (the checkpoint of ``step``) and write it in the background, to ``jepa-latest.pth.tar``
        and, with ``keep_epoch``, to ``jepa-epN.pth.tar`` too. Waits for the previous save first (at most
        ``timeout`` seconds: False, and nothing started, when it is still being written then) and raises its
        failure.

        ``stopped``: training has stopped, nothing changes the tensors any more: CPU tensors are not copied.
        ``signalled``: a stop signal came; the write does not hold up the process's exit (see the module docstring).
        """
        self.last_start = time.monotonic()
        if self.writer is None:
            # Process 0 starts a save only once the previous one is written, and every process stops if it failed.
            if self.pending_step is not None:
                self.saved_step = self.pending_step
            self.pending_step = step
            return True
        if not self.wait(step, timeout):
            return False
        copies = [self.run_dir / epoch_checkpoint_name(keep_epoch)] if keep_epoch is not None else []
        self.writer.save(state, self.latest, copies, copy_cpu=not stopped, daemon=signalled)
        self.pending_step, self._announce = step, stopped
        return True

    def failed(self) -> bool:
        """Whether a background write has finished and failed (process 0; does not wait)."""
        return self.writer is not None and self.writer.failed

    def poll(self) -> None:
        """Note a background write that has finished well."""
        if self.writer is not None and self.pending_step is not None and not self.writer.busy and \
                not self.writer.failed:
            self.saved_step, self.pending_step = self.pending_step, None
            if not self._reported or self._announce:
                self._reported = True
                self.report(self._describe_write())

    def _describe_write(self) -> str:
        timing = self.writer.last
        size = timing.path.stat().st_size if timing.path.exists() else 0
        amount = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
        return (f"checkpoint of step {self.saved_step} saved: {amount}, a {timing.snapshot_s:.2f} s snapshot then "
                f"{timing.write_s:.1f} s of writing in the background")

    def wait(self, now: int, timeout: float | None = None) -> bool:
        """Wait for the write under way (at most ``timeout`` seconds); False when it is still going on then.

        A failed write raises :class:`CheckpointError` explaining it (``now``: the step training stopped at)."""
        if self.writer is None:  # process 0 writes; the others learn how it went from it (conclude)
            return True
        try:
            if not self.writer.wait(timeout):
                return False
        except CheckpointError as exc:
            failed, self.pending_step = self.pending_step, None
            redo = (f"`openjepa pretrain --resume {self.run_dir}` continues from step {self.saved_step}"
                    if self.saved_step is not None else "the run has to start again")
            raise CheckpointError(
                f"{exc} (the checkpoint of step {failed}). Training stopped at step {now} instead of going on "
                f"without a safe copy of its progress; free some space (or choose another train.out_dir), then "
                f"{redo}"
            ) from exc
        self.poll()
        return True

    def conclude(self, written: bool) -> None:
        """On a process that does not write: whether process 0 completed the save under way (``saved_step``)."""
        if written and self.pending_step is not None:
            self.saved_step = self.pending_step
        self.pending_step = None

    def settle(self) -> None:
        """Wait for a write under way without raising (an error is on its way already): ``saved_step`` is then
        exact for the error's message."""
        try:
            self.wait(now=0)
        except CheckpointError:
            pass

    def describe_pending(self) -> str:
        if self.writer is not None and self.writer.last is not None:
            return f"the checkpoint of step {self.pending_step} ({self.writer.last.path})"
        return f"the checkpoint of step {self.pending_step}"
