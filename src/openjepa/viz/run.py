"""Training curves of a run folder: loss, schedules, throughput, mask sizes and the online monitor's metrics.

Reads ``metrics.csv`` (one row per step) and, when present, ``monitor.csv`` (one row per online evaluation,
whatever numeric columns the monitor logged) and ``config.yaml``; draws one panel per quantity.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..errors import UserError
from ..run_folder import CONFIG, CURVES_PNG, METRICS_CSV, MONITOR_CSV
from .chart import Series, draw_chart, smooth
from .draw import MUTED, PALETTE, SMALL_SIZE, TITLE_SIZE, fit_text, new_canvas, put_text, save_png

PANEL_SIZE = (400, 250)  # width, height of one chart
COLUMNS = 3
HEADER = 58  # title and summary lines above the charts
MARGIN = 12


@dataclass
class RunCurves:
    """The numeric columns of a run's CSV files, as float arrays (NaN where a cell is empty)."""

    name: str
    steps: dict[str, np.ndarray]
    monitor: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def read_numeric_csv(path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV file with a header (non-numeric columns are dropped); ``{}`` when the file is
    missing or holds no data row."""
    if not path.is_file():
        return {}
    fast = _read_all_numeric(path)
    if fast is not None:
        return fast
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            return {}
        rows = [row for row in reader if row]
    if not rows:
        return {}
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(header):
        values = np.array([_number(row[i]) if i < len(row) else math.nan for row in rows], dtype=float)
        if np.isfinite(values).any():
            columns[name.strip()] = values
    return columns


def _read_all_numeric(path: Path) -> dict[str, np.ndarray] | None:
    """numpy's C parser for the usual case (every cell a number; ~6x faster on long runs), else None."""
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": handled below
            values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=float)
    except ValueError:  # empty cells, text, ragged rows: the tolerant reader handles them
        return None
    if values.shape[0] == 0 or values.shape[1] != len(header):
        return None
    return {name.strip(): values[:, i] for i, name in enumerate(header) if np.isfinite(values[:, i]).any()}


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def read_run(run_dir: str | os.PathLike) -> RunCurves:
    """Read a run folder written by ``openjepa pretrain``; raises :class:`UserError` when there is nothing to draw."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run folder {run_dir} does not exist (it is the train.out_dir of a pretraining run)")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file; pass the run folder that holds {METRICS_CSV}")
    if not (run_dir / METRICS_CSV).is_file():
        raise UserError(
            f"{run_dir} holds no {METRICS_CSV}: is it a folder written by `openjepa pretrain` (its train.out_dir)?"
        )
    steps = read_numeric_csv(run_dir / METRICS_CSV)
    if "step" not in steps:
        raise UserError(f"{run_dir / METRICS_CSV} has no logged step yet (empty, or no 'step' column)")
    monitor = read_numeric_csv(run_dir / MONITOR_CSV)
    config: dict = {}
    if (run_dir / CONFIG).is_file():
        try:
            config = yaml.safe_load((run_dir / CONFIG).read_text()) or {}
        except yaml.YAMLError:
            config = {}  # the picture does not need the config; a damaged one only loses the header details
    return RunCurves(run_dir.resolve().name, steps, monitor if "step" in monitor else {}, config)


# -- panels ---------------------------------------------------------------------------------------------------------
@dataclass
class Panel:
    """One chart of the run picture."""

    title: str
    series: list[Series]
    from_zero: bool = False  # the vertical axis starts at 0 (distance from 0 is what matters)


def _smoothing_window(n: int) -> int:
    """Moving-average length for ``n`` steps: none for short runs (every step is visible anyway)."""
    window = min(200, n // 25)
    return window if window >= 5 else 1


def _noisy_panel(x: np.ndarray, y: np.ndarray, label: str, colour) -> list[Series]:
    """A noisy per-step quantity: its per-step range as a band and a moving average on top."""
    window = _smoothing_window(len(y))
    raw = Series(x, y, "per step", colour, width=1, envelope=True)
    if window <= 1:
        return [Series(x, y, label, colour)]
    return [raw, Series(x, smooth(y, window), f"mean of {window} steps", colour)]


MONITOR_GROUPS = (
    ("probe accuracy", ("top1", "top5", "acc")),
    ("effective rank (RankMe)", ("rank",)),
    ("feature std", ("std",)),
)


def _monitor_panels(monitor: dict[str, np.ndarray]) -> list[Panel]:
    """Accuracy-like columns share a panel, rank-like ones another, anything else gets its own. Accuracy, rank
    and spread are drawn from 0, where collapse would take them."""
    x = monitor["step"]
    names = [n for n in monitor if n not in ("step", "epoch")]
    panels, used = [], set()
    for title, keys in MONITOR_GROUPS:
        members = [n for n in names if n not in used and any(k in n.lower() for k in keys)]
        if members:
            used.update(members)
            panels.append(Panel(title, [Series(x, monitor[n], n, PALETTE[i % len(PALETTE)], markers=True)
                                        for i, n in enumerate(members)], from_zero=True))
    for name in names:
        if name not in used:
            panels.append(Panel(name, [Series(x, monitor[name], name, PALETTE[0], markers=True)]))
    return panels


def run_panels(curves: RunCurves) -> list[Panel]:
    """Every panel of the run picture, in display order."""
    s = curves.steps
    x = s["step"]
    panels: list[Panel] = []
    if "loss" in s:
        panels.append(Panel("training loss", _noisy_panel(x, s["loss"], "loss", PALETTE[0])))
    for key, title, colour in (("lr", "learning rate", PALETTE[1]), ("wd", "weight decay", PALETTE[2]),
                               ("momentum", "EMA momentum of the target encoder", PALETTE[3])):
        if key in s:
            panels.append(Panel(title, [Series(x, s[key], key, colour)]))
    if "grad_norm" in s:  # logged when optim.grad_clip is set
        panels.append(Panel("gradient norm (before clipping)", _noisy_panel(x, s["grad_norm"], "norm", PALETTE[5]),
                            from_zero=True))
    if "images_per_s" in s:
        panels.append(Panel("throughput (images/s)", _noisy_panel(x, s["images_per_s"], "images/s", PALETTE[4]),
                            from_zero=True))
    timing = [(k, c) for k, c in (("step_ms", PALETTE[0]), ("data_ms", PALETTE[1])) if k in s]
    if timing:
        window = _smoothing_window(len(x))
        panels.append(Panel(f"time per step (ms{f', mean of {window} steps' if window > 1 else ''})",
                            [Series(x, smooth(s[k], window), k.replace("_ms", ""), c) for k, c in timing],
                            from_zero=True))
    masks = [(k, c) for k, c in (("context_len", PALETTE[0]), ("target_len", PALETTE[1])) if k in s]
    if masks:
        panels.append(Panel("mask sizes (patches per image / block)",
                            [Series(x, s[k], k.replace("_len", ""), c, width=1) for k, c in masks], from_zero=True))
    if curves.monitor:
        panels.extend(_monitor_panels(curves.monitor))
    return panels


# -- the picture ------------------------------------------------------------------------------------------------------
def run_picture_size(num_panels: int) -> tuple[int, int]:
    """Pixel size of the run picture for ``num_panels`` charts (``COLUMNS`` per row)."""
    rows = max(1, math.ceil(num_panels / COLUMNS))
    return 2 * MARGIN + COLUMNS * PANEL_SIZE[0], HEADER + rows * PANEL_SIZE[1] + MARGIN


def _epochs(count) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}" if count is not None else "? epochs"


def _header_lines(curves: RunCurves) -> tuple[str, str]:
    cfg = curves.config
    model, data, optim = cfg.get("model", {}), cfg.get("data", {}), cfg.get("optim", {})
    s = curves.steps
    last_step = int(np.nanmax(s["step"]))
    title = f"{curves.name}: step {last_step:,}"
    if model or data:
        title += (f" | {model.get('arch', '?')}/{model.get('patch_size', '?')} at {model.get('img_size', '?')}px"
                  f" on {data.get('dataset', '?')}, {_epochs(optim.get('epochs'))} planned")
    facts = []
    if "loss" in s and np.isfinite(s["loss"]).any():
        loss = s["loss"][np.isfinite(s["loss"])]
        tail = loss[-max(1, len(loss) // 50):].mean()
        facts.append(f"loss {loss[0]:.4g} at the start, {tail:.4g} now (min {loss.min():.4g})")
    for name, values in curves.monitor.items():
        if name not in ("step", "epoch") and np.isfinite(values).any():
            facts.append(f"{name}: {values[np.isfinite(values)][-1]:.4g}")
    return title, "; ".join(facts)


def render_run(run: str | os.PathLike | RunCurves) -> Image.Image:
    """The training-curves picture of a run folder, or of curves already read by :func:`read_run` (see
    :func:`run_panels` for what is drawn)."""
    curves = run if isinstance(run, RunCurves) else read_run(run)
    panels = run_panels(curves)
    width, height = run_picture_size(len(panels))
    image, draw = new_canvas(width, height)
    title, facts = _header_lines(curves)
    put_text(draw, (MARGIN, MARGIN), fit_text(title, width - 2 * MARGIN, TITLE_SIZE), TITLE_SIZE)
    put_text(draw, (MARGIN, MARGIN + 24), fit_text(facts, width - 2 * MARGIN, SMALL_SIZE), SMALL_SIZE, MUTED)
    steps = curves.steps["step"][np.isfinite(curves.steps["step"])]
    x_range = (float(steps.min()), float(steps.max()))  # every panel spans the whole run, so that they line up
    for i, panel in enumerate(panels):
        row, col = divmod(i, COLUMNS)
        left = MARGIN + col * PANEL_SIZE[0]
        top = HEADER + row * PANEL_SIZE[1]
        draw_chart(draw, (left, top, left + PANEL_SIZE[0] - 8, top + PANEL_SIZE[1] - 8), panel.series, panel.title,
                   x_range=x_range if x_range[1] > x_range[0] else None, from_zero=panel.from_zero)
    return image


def save_run_plot(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Write the training-curves PNG of ``run_dir`` to ``out`` (default ``RUN_DIR/curves.png``).

    Safe to call from a training loop: returns ``None`` (and draws nothing) when the run has no logged step yet,
    and turns any other failure into a warning, because a picture must never stop a training run.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / CURVES_PNG
    try:
        curves = read_run(run_dir)
    except UserError:
        return None  # no CSV or no row yet: nothing to draw
    try:
        return save_png(render_run(curves), out)
    except Exception as exc:  # noqa: BLE001 -- see the docstring: log and carry on training
        warnings.warn(f"could not draw the training curves of {run_dir}: {exc}", RuntimeWarning, stacklevel=2)
        return None
