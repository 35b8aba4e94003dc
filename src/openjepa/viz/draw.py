"""Drawing primitives shared by every picture: fonts, colours, text, legends, PNG output.

Everything is drawn with Pillow, a core dependency, so that pictures (and the training curves the trainer writes
at every checkpoint) need nothing beyond a plain ``pip install openjepa``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError

RGB = tuple[int, int, int]

BACKGROUND: RGB = (255, 255, 255)
INK: RGB = (33, 33, 33)  # titles and labels
MUTED: RGB = (110, 110, 110)  # tick labels and captions
GRID: RGB = (228, 228, 228)
AXIS: RGB = (150, 150, 150)

# Okabe & Ito's colour-blind-safe palette (a published set of colour values), most distinct colours first.
PALETTE: tuple[RGB, ...] = (
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (0, 158, 115),  # bluish green
    (204, 121, 167),  # reddish purple
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (240, 228, 66),  # yellow
    (60, 60, 60),  # near black
)

TITLE_SIZE = 16
LABEL_SIZE = 13
SMALL_SIZE = 11


@functools.lru_cache(maxsize=16)
def font(size: int = LABEL_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable sans-serif font: DejaVu Sans when the system has it (most Linux distributions do; its wider
    spacing reads better at small sizes), else the font embedded in Pillow >= 10.1, else Pillow's small bitmap
    font (text then ignores ``size`` but stays legible)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):  # older Pillow, or Pillow built without FreeType
        return ImageFont.load_default()


def text_size(text: str, size: int = LABEL_SIZE) -> tuple[int, int]:
    """Width and height in pixels of one line of ``text``."""
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - left), int(bottom - top)


def fit_text(text: str, max_width: int, size: int = LABEL_SIZE) -> str:
    """``text`` shortened with an ellipsis so that it fits in ``max_width`` pixels."""
    if text_size(text, size)[0] <= max_width:
        return text
    while text and text_size(text + "…", size)[0] > max_width:
        text = text[:-1]
    return text + "…" if text else ""


def put_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int = LABEL_SIZE,
    fill: RGB = INK,
    anchor: str = "la",
) -> None:
    """Draw ``text`` at ``xy``; ``anchor`` follows Pillow's two-letter convention (``la``: left/ascender,
    ``mm``: centred, ``rm``: right/middle...)."""
    f = font(size)
    if isinstance(f, ImageFont.FreeTypeFont):
        draw.text(xy, text, fill=fill, font=f, anchor=anchor)
        return
    # Bitmap fonts do not support anchors: place the text box by hand.
    width, height = text_size(text, size)
    dx = {"l": 0, "m": width / 2, "r": width}[anchor[0]]
    dy = {"a": 0, "t": 0, "m": height / 2, "s": height, "b": height, "d": height}[anchor[1]]
    draw.text((xy[0] - dx, xy[1] - dy), text, fill=fill, font=f)


def new_canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (int(width), int(height)), BACKGROUND)
    return image, ImageDraw.Draw(image)


def legend_width(labels: Sequence[str], size: int = LABEL_SIZE, swatch: int = 14, gap: int = 18) -> int:
    """Width of a one-line legend drawn by :func:`draw_legend`."""
    return sum(swatch + 6 + text_size(label, size)[0] + gap for label in labels) - gap if labels else 0


def draw_legend(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    items: Sequence[tuple[str, RGB]],
    size: int = LABEL_SIZE,
    swatch: int = 14,
    gap: int = 18,
    outline_only: Sequence[bool] | None = None,
) -> None:
    """One line of coloured swatches and labels starting at ``xy`` (top-left)."""
    x, y = xy
    for i, (label, colour) in enumerate(items):
        box = (x, y, x + swatch, y + swatch)
        if outline_only is not None and outline_only[i]:
            draw.rectangle(box, outline=colour, width=3)
        else:
            draw.rectangle(box, fill=colour)
        put_text(draw, (x + swatch + 6, y + swatch / 2), label, size, INK, "lm")
        x += swatch + 6 + text_size(label, size)[0] + gap


def check_png_path(path: str | os.PathLike) -> Path:
    """The output path, with a clear error when it cannot hold a PNG."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"output {path} must end in .png (the pictures are written as PNG files)")
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name such as {path / 'picture.png'}")
    return path


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as a PNG, creating missing parent folders."""
    path = check_png_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        image.save(path, format="PNG", optimize=True)
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from exc
    return path


@dataclass(frozen=True)
class TileLayout:
    """Rows of equal tiles under a header: ``columns`` tiles of ``tile`` = (width, height) pixels per row, each
    with ``caption`` pixels of text below it, ``gap`` pixels between tiles and ``margin`` around everything.

    ``size`` = (2 * margin + columns * width + (columns - 1) * gap,
    2 * margin + header + rows * (height + caption) + (rows - 1) * gap + footer).
    """

    count: int
    columns: int
    tile: tuple[int, int]
    caption: int = 18
    header: int = 0
    footer: int = 0
    gap: int = 10
    margin: int = 12

    @property
    def rows(self) -> int:
        return max(1, -(-self.count // self.columns))

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.tile
        width = 2 * self.margin + self.columns * w + (self.columns - 1) * self.gap
        height = (2 * self.margin + self.header + self.rows * (h + self.caption) + (self.rows - 1) * self.gap
                  + self.footer)
        return width, height

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left pixel of tile ``index`` (row-major)."""
        row, col = divmod(index, self.columns)
        w, h = self.tile
        return (self.margin + col * (w + self.gap),
                self.margin + self.header + row * (h + self.caption + self.gap))

    @property
    def footer_top(self) -> int:
        return self.size[1] - self.margin - self.footer
