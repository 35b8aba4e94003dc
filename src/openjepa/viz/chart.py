"""Line charts drawn with Pillow: axes, "nice" ticks, grid, title, legend.

Long series (one point per training step) are reduced to one bucket per horizontal pixel: the mean is drawn as
the line and, for series marked ``envelope``, the min-max range of each bucket as a light band, which is what a
dense line would look like anyway -- at a cost that does not grow with the length of the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from .draw import AXIS, GRID, INK, MUTED, RGB, SMALL_SIZE, draw_legend, fit_text, legend_width, put_text, text_size

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class Series:
    """One line of a chart."""

    x: np.ndarray
    y: np.ndarray
    label: str
    colour: RGB
    width: int = 2
    envelope: bool = False  # draw the min-max range of each pixel column as a light band
    markers: bool = False  # draw a dot at every point (sparse series such as evaluations)


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """About ``target`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) within ``[lo, hi]``;
    whole numbers only when ``integer`` (training steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = 10 * magnitude
    for multiple in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (multiple * magnitude) <= target + 0.5:
            step = multiple * magnitude
            break
    if integer:
        step = max(1, round(step)) if step >= 1 else 1
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(max(0, count))]


def format_ticks(ticks: Sequence[float]) -> list[str]:
    """Labels with one shared format: ``2k``/``1.5M`` for large values, enough decimals for the tick step,
    scientific notation for very small steps."""
    if not ticks:
        return []
    largest = max(abs(t) for t in ticks)
    step = min((abs(b - a) for a, b in zip(ticks, ticks[1:])), default=largest or 1.0) or 1.0
    if largest >= 1e6:
        return ["0" if t == 0 else f"{t / 1e6:g}M" for t in ticks]
    if largest >= 1e4:
        return ["0" if t == 0 else f"{t / 1e3:g}k" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    fraction = step * 10**decimals % 1
    if min(fraction, 1 - fraction) > 1e-6:  # steps such as 0.25 need one more digit
        decimals += 1
    if decimals > 4:  # scientific, with as many mantissa digits as the step needs
        digits = max(0, math.floor(math.log10(largest)) - math.floor(math.log10(step) + 1e-9))
        return ["0" if t == 0 else f"{t:.{digits}e}".replace("e-0", "e-") for t in ticks]
    return [f"{t:.{decimals}f}" for t in ticks]


def _value_range(series: Sequence[Series], from_zero: bool = False) -> tuple[float, float] | None:
    finite = [s.y[np.isfinite(s.y)] for s in series]
    finite = [v for v in finite if v.size]
    if not finite:
        return None
    lo = float(min(v.min() for v in finite))
    hi = float(max(v.max() for v in finite))
    if from_zero and lo >= 0:
        return 0.0, hi * 1.06 if hi > 0 else 1.0
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):  # a constant: give it some room around its value
        pad = abs(hi) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def _bucket(x: np.ndarray, y: np.ndarray, columns: int, x_lo: float, x_hi: float):
    """Reduce ``(x, y)`` to at most ``columns`` points: bucket centres, means, minima and maxima."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size <= columns:
        return x, y, y, y
    idx = np.clip(((x - x_lo) / max(x_hi - x_lo, 1e-12) * (columns - 1)).round().astype(int), 0, columns - 1)
    counts = np.bincount(idx, minlength=columns)
    used = counts > 0
    mean = np.bincount(idx, weights=y, minlength=columns)[used] / counts[used]
    xs = np.bincount(idx, weights=x, minlength=columns)[used] / counts[used]
    lows = np.full(columns, np.inf)
    highs = np.full(columns, -np.inf)
    np.minimum.at(lows, idx, y)
    np.maximum.at(highs, idx, y)
    return xs, mean, lows[used], highs[used]


def _lighter(colour: RGB, amount: float = 0.7) -> RGB:
    return tuple(int(c + (255 - c) * amount) for c in colour)  # type: ignore[return-value]


def draw_chart(
    draw: ImageDraw.ImageDraw,
    box: Box,
    series: Sequence[Series],
    title: str,
    xlabel: str = "step",
    x_range: tuple[float, float] | None = None,
    from_zero: bool = False,
) -> None:
    """A line chart of ``series`` inside ``box``; shows "no data" when nothing is finite.

    ``x_range``: a shared horizontal extent (so that panels of one run line up); default: the data's.
    ``from_zero``: the vertical axis starts at 0 for non-negative data (quantities whose distance from 0
    matters, such as accuracy or feature spread)."""
    left, top, right, bottom = box
    put_text(draw, (left + 4, top + 4), fit_text(title, right - left - 8), 13, INK)
    labels = [s.label for s in series] if len(series) > 1 else []
    y_range = _value_range(series, from_zero)
    xs = [s.x[np.isfinite(s.x)] for s in series if s.x.size]
    if y_range is None or not any(v.size for v in xs):
        put_text(draw, ((left + right) / 2, (top + bottom) / 2), "no data", SMALL_SIZE, MUTED, "mm")
        return
    x_lo = float(min(v.min() for v in xs if v.size)) if x_range is None else float(x_range[0])
    x_hi = float(max(v.max() for v in xs if v.size)) if x_range is None else float(x_range[1])
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = nice_ticks(*y_range)
    y_labels = format_ticks(y_ticks)
    label_w = max((text_size(t, SMALL_SIZE)[0] for t in y_labels), default=0)
    legend_h = 20 if labels else 0
    plot = (left + label_w + 12, top + 26 + legend_h, right - 12, bottom - 34)
    if labels:
        items = [(s.label, _lighter(s.colour) if s.envelope else s.colour) for s in series]
        start = max(plot[0], right - 8 - legend_width(labels, SMALL_SIZE, 10, 12))
        draw_legend(draw, (start, top + 26), items, SMALL_SIZE, 10, 12)
    _draw_axes(draw, plot, (x_lo, x_hi), y_range, y_ticks, y_labels, xlabel)
    for s in series:
        _draw_series(draw, plot, s, (x_lo, x_hi), y_range)


def _to_pixels(plot: Box, x_range, y_range, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    px = plot[0] + (x - x_range[0]) / (x_range[1] - x_range[0]) * (plot[2] - plot[0])
    py = plot[3] - (y - y_range[0]) / (y_range[1] - y_range[0]) * (plot[3] - plot[1])
    return px, py


def _draw_axes(draw, plot: Box, x_range, y_range, y_ticks, y_labels, xlabel: str) -> None:
    left, top, right, bottom = plot
    for value, label in zip(y_ticks, y_labels):
        _, y = _to_pixels(plot, x_range, y_range, np.array([x_range[0]]), np.array([value]))
        draw.line([(left, y[0]), (right, y[0])], fill=GRID, width=1)
        put_text(draw, (left - 6, y[0]), label, SMALL_SIZE, MUTED, "rm")
    x_ticks = nice_ticks(x_range[0], x_range[1], 4, integer=True)
    for value, label in zip(x_ticks, format_ticks(x_ticks)):
        x, _ = _to_pixels(plot, x_range, y_range, np.array([value]), np.array([y_range[0]]))
        draw.line([(x[0], bottom), (x[0], bottom + 4)], fill=AXIS, width=1)
        put_text(draw, (x[0], bottom + 6), label, SMALL_SIZE, MUTED, "ma")
    draw.rectangle(plot, outline=AXIS, width=1)
    put_text(draw, (right, bottom + 21), xlabel, SMALL_SIZE, MUTED, "ra")


def _draw_series(draw, plot: Box, s: Series, x_range, y_range) -> None:
    columns = max(2, plot[2] - plot[0])
    bx, mean, lows, highs = _bucket(s.x.astype(float), s.y.astype(float), columns, *x_range)
    if bx.size == 0:
        return
    px, py = _to_pixels(plot, x_range, y_range, bx, mean)
    if s.envelope:
        _, plo = _to_pixels(plot, x_range, y_range, bx, lows)
        _, phi = _to_pixels(plot, x_range, y_range, bx, highs)
        band = _lighter(s.colour)
        for x, a, b in zip(px, plo, phi):
            draw.line([(x, a), (x, b)], fill=band, width=1)
    # Missing values (empty CSV cells) were dropped by _bucket: the line joins the points on either side.
    points = list(zip(px.tolist(), py.tolist()))
    if len(points) > 1:  # a series drawn as a band keeps its line light too: the band is the message
        draw.line(points, fill=_lighter(s.colour, 0.45) if s.envelope else s.colour, width=s.width, joint="curve")
    if s.markers or len(points) == 1:
        r = s.width + 1
        for x, y in points:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=s.colour)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points that ignores missing values (NaN)."""
    if window <= 1 or y.size < 3:
        return y.astype(float)
    window = min(window, y.size)
    finite = np.isfinite(y)
    values = np.where(finite, y, 0.0).astype(float)
    kernel = np.ones(window)
    total = np.convolve(values, kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
