"""Evaluation as the trainer runs it: the online monitor between epochs and the final probe at the end."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..config import RunConfig
from ..data import build_eval_dataset
from ..errors import DataError
from ..eval.baseline import random_init_like
from ..eval.collapse import decline_problems, format_decline
from ..eval.online_monitor import OnlineMonitor
from ..eval.report import final_report
from ..run_folder import FINAL_JSON


def has_test_split(cfg: RunConfig) -> bool:
    """Whether the dataset comes with a held-out split (digits, IDX, CIFAR, a folder with val/ or test/)."""
    try:
        build_eval_dataset(cfg.data, cfg.model, "test")
    except DataError:
        return False
    return True


def eval_datasets(cfg: RunConfig, run_dir: Path | None = None) -> tuple[Dataset, Dataset]:
    """Labelled train / test evaluation datasets. Without a test split, the training images are split in two
    disjoint halves (fixed seed) so that the monitor never scores images it was fitted on."""
    train = build_eval_dataset(cfg.data, cfg.model, "train", bad_file_dir=run_dir)
    if has_test_split(cfg):
        return train, build_eval_dataset(cfg.data, cfg.model, "test", bad_file_dir=run_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.eval.seed)).tolist()
    half = len(order) // 2
    return Subset(train, order[:half]), Subset(train, order[half:])


class RunMonitor:
    """Runs :class:`OnlineMonitor` on the target encoder between epochs and the final probe at the end."""

    def __init__(self, cfg: RunConfig, device: torch.device, run_dir: Path | None = None):
        self.cfg = cfg
        self.device = device
        self.train_ds, self.test_ds = eval_datasets(cfg, run_dir)
        self.online = OnlineMonitor(cfg.eval, self.train_ds, self.test_ds, device)
        self.decline: str | None = None  # the last run's "features getting worse" warning

    def set_baseline(self, encoder: torch.nn.Module) -> str:
        """Score the same architecture as ``encoder`` at random initialisation (seed ``eval.seed``, as the final
        report's baseline) once; later runs warn when the trained encoder is no better. Returns a log line."""
        metrics = self.online.set_baseline(random_init_like(encoder, self.cfg.eval.seed))
        return f"monitor, same architecture at random init: {self.online.describe(metrics)}"

    def run(self, encoder: torch.nn.Module, history: list[dict] = ()) -> dict[str, float]:
        """Score ``encoder``; ``history``: the run's earlier monitor rows (a resumed run's included), against
        whose best accuracy a decline of ``eval.decline_warning_points`` or more is flagged."""
        metrics = self.online.run(encoder)
        self.decline = format_decline(decline_problems(metrics, list(history), self.cfg.eval.decline_warning_points))
        return metrics

    @property
    def warning(self) -> str | None:
        """The last run's warning (collapse, or no better than random init), None when all is well."""
        return self.online.last_warning

    @property
    def flag(self) -> str | None:
        """What the progress bar shows after the last run: the most serious warning, None when all is well."""
        if self.online.last_warning:
            return "WARNING: collapse suspected (see log)"
        return "WARNING: features getting worse (see log)" if self.decline else None

    def describe(self, row: dict) -> str:
        metrics = {k: v for k, v in row.items() if k not in ("step", "epoch")}
        line = f"monitor after epoch {row['epoch']}: {self.online.describe(metrics)}"
        for warning in (self.online.last_warning, self.decline):
            if warning:
                line += f"\nwarning: {warning}"
        return line

    def final(self, encoder: torch.nn.Module, run_dir: Path) -> str:
        """Probe the pretrained target encoder and the same architecture at random init; write final.json."""
        report = final_report(encoder, None, self.train_ds, self.test_ds, self.cfg.eval, self.device)
        (run_dir / FINAL_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        return report.line()
