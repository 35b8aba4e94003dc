"""What a run writes about its progress: the per-step CSV, the monitor CSV and optional TensorBoard events
(process 0 only). The trainers' view (pretraining and fine-tuning): :class:`RunLog`."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic_write import atomic_write
from ..errors import UserError
from ..run_folder import METRICS_CSV, MONITOR_CSV, TENSORBOARD

STEP_FIELDS = (
    "step", "epoch", "loss", "lr", "wd", "momentum", "context_len", "target_len", "step_ms", "data_ms",
    "images_per_s",
)
GRAD_NORM_FIELD = "grad_norm"  # logged when optim.grad_clip computes the norm anyway
REGULARIZER_FACTOR_FIELD = "regularizer_factor"  # logged when model.regularizer_fade sets one


def read_rows(path: Path) -> list[dict[str, float]]:
    """The rows of one of a run's CSV logs as numbers (``step`` and ``epoch`` as ints; empty cells and
    non-numeric values left out); an empty list when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [_numbers(row) for row in csv.DictReader(f)]


def _numbers(row: Mapping[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, text in row.items():
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        out[key] = int(value) if key in ("step", "epoch") else value
    return out


class CsvLog:
    """An append-only CSV whose header is fixed by the first row (or ``fields``).

    On resume, rows logged after the checkpoint being resumed (``step > keep_until``) are dropped, so the log
    of a crashed-and-resumed run reads like the log of an uninterrupted one.
    """

    def __init__(self, path: Path, fields: tuple[str, ...] | None = None, keep_until: int | None = None):
        self.path = path
        self.fields = list(fields) if fields else None
        if keep_until is not None and path.exists():
            self._truncate(keep_until)
        elif keep_until is None and path.exists():
            path.unlink()
        if path.exists():  # a resumed log keeps its header, whatever the new run would log
            with path.open(newline="") as f:
                self.fields = next(csv.reader(f), None) or self.fields

    def rows(self) -> list[dict[str, float]]:
        """What the file holds so far (a resumed run's earlier rows included), as numbers."""
        return read_rows(self.path)

    def _truncate(self, keep_until: int) -> None:
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
            fields = rows and list(rows[0].keys())
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) <= keep_until]
        if not fields:
            self.path.unlink()
            return
        with atomic_write(self.path) as f:  # a kill at this moment must not lose the history
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, row: Mapping[str, Any]) -> None:
        new = not self.path.exists()
        if self.fields is None:
            self.fields = list(row.keys())
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.fields})


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


class TensorBoard:
    """Thin wrapper so that TensorBoard stays an optional extra."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # lazy: optional dependency (the tensorboard extra)
        except ImportError as exc:
            raise UserError(
                "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                "(or pip install 'openjepa[tensorboard]'), or set train.tensorboard=false"
            ) from exc
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, values: Mapping[str, Any], step: int, prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class RunLog:
    """Everything a run writes about its progress: ``metrics.csv`` (every step, the columns ``step_fields``: by
    default pretraining's), ``monitor.csv`` (every evaluation: the online monitor, fine-tuning's held-out score)
    and, optionally, TensorBoard events."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool,
                 step_fields: tuple[str, ...] = STEP_FIELDS):
        self.steps = CsvLog(run_dir / METRICS_CSV, step_fields, keep_until=resume_step)
        self.monitor = CsvLog(run_dir / MONITOR_CSV, keep_until=resume_step)
        self.tb = TensorBoard(run_dir / TENSORBOARD, purge_step=resume_step) if tensorboard else None

    def step(self, row: Mapping[str, Any]) -> None:
        self.steps.write(row)
        if self.tb:
            self.tb.log(row, int(row["step"]), "train")

    def monitored(self, row: Mapping[str, Any]) -> None:
        self.monitor.write(row)
        if self.tb:
            self.tb.log(row, int(row["step"]), "monitor")

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV files are closed after every row)."""
        if self.tb:
            self.tb.close()
            self.tb = None
