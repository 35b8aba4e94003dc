"""Decoding image files safely and bringing every Pillow mode to 8-bit grey (``L``) or colour (``RGB``).

Readable files in odd modes are converted, never skipped:

* palette (``P``/``PA``): expanded to RGB (RGBA when the palette has transparency);
* transparency (``RGBA``, ``LA``, premultiplied ``RGBa``/``La``): composited on **white**. Transparent pixels
  often hold arbitrary colours (frequently black) that the author never meant to be seen; white is how browsers,
  viewers and documents show such images (logos, icons, cut-out product photos), so it is the background the
  image was designed against;
* 16-bit grey (``I;16*``) and 32-bit integer (``I``, which older Pillows used for 16-bit PNGs): the 0..65535
  range scaled to 0..255 (``round(v * 255 / 65535)``), values outside it clipped;
* 32-bit float (``F``): taken as 0..1 when all values lie in that range, otherwise stretched from its own min to
  max (floats have no standard range); NaNs become 0;
* 1-bit: 0/255 grey; CMYK, YCbCr, HSV and other colour modes: Pillow's conversion to RGB.

Colour images become grey by ITU-R 601 luminance for one-channel models; grey images stay one-channel here and
are replicated to three channels as tensors (cheaper than resizing three identical planes).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = {"RGBA": "RGB", "LA": "L", "RGBa": "RGB", "La": "L", "PA": "RGB"}


class UnreadableImage(Exception):
    """A file that cannot be decoded; ``reason`` says why in plain words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _open_binary(path: str) -> BinaryIO:
    # The single place files are opened, so tests can simulate unreadable files even when running as root
    # (for whom chmod 000 does not prevent reading).
    return open(path, "rb")


def _looks_like_text(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return _is_text(head)


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(head) and b"\x00" not in head


def describe_failure(path: str, exc: BaseException) -> str:
    """A short human explanation of why ``path`` could not be decoded."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link (points to {os.readlink(path)!r}, which does not exist)"
    if isinstance(exc, FileNotFoundError):
        return "file not found (moved or deleted after the folder was listed)"
    if isinstance(exc, PermissionError):
        return "permission denied (make the file readable, e.g. chmod a+r)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    return describe_data_failure(exc, size, lambda: _looks_like_text(path))


def describe_data_failure(exc: BaseException, size: int | None, looks_like_text) -> str:
    """Why bytes of known ``size`` (a file's, or a tar member's) failed to decode; ``looks_like_text()`` is only
    called when Pillow did not recognise the format."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (f"too many pixels: {exc} It is skipped rather than raising the limit for every image; resize it, "
                f"or raise PIL.Image.MAX_IMAGE_PIXELS yourself if you trust the file")
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        if looks_like_text():
            return "a text file, not an image"
        return "not an image format Pillow can read (unknown, unsupported or corrupt header)"
    message = str(exc)
    if "truncated" in message or isinstance(exc, EOFError):
        return f"truncated image data (the file is incomplete: {size} bytes)"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {message})"


class Picture:
    """An image file whose header is read but whose pixels are not decoded yet.

    Knowing the stored size before decoding lets the transform pick its crop first and then ask JPEG decoding for
    a reduced resolution that still covers the crop at the output size (``draft``), which is much faster for
    large photos and small models. Use as a context manager; every failure raises :class:`UnreadableImage`.
    """

    def __init__(self, path: str, data: bytes | None = None):
        self.path = path  # with ``data``: only a description of where the bytes come from (e.g. a tar member)
        self._data = data
        self._file: BinaryIO | None = None
        try:
            with warnings.catch_warnings():
                # Pillow only warns between MAX_IMAGE_PIXELS and twice that: treat both as unreadable.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self._file = _open_binary(path) if data is None else io.BytesIO(data)
                self._image = Image.open(self._file)
        except Exception as exc:  # Pillow raises many types on bad data; all mean "skip this file"
            self.close()
            raise UnreadableImage(path, self._describe(exc)) from exc
        self.size: tuple[int, int] = self._image.size
        self.mode: str = self._image.mode
        self.format: str | None = self._image.format

    def decode(self, channels: int, draft: tuple[int, int] | None = None) -> Image.Image:
        """Pixels in mode ``L`` or ``RGB`` (``L`` only when ``channels == 1``); possibly reduced by ``draft``."""
        try:
            if draft is not None and self.format == "JPEG":
                self._image.draft(self._image.mode, draft)
            self._image.load()
            return to_standard_mode(self._image, channels)
        except Exception as exc:  # truncated data, bad chunks, unsupported compression...
            raise UnreadableImage(self.path, self._describe(exc)) from exc

    def _describe(self, exc: BaseException) -> str:
        if self._data is None:
            return describe_failure(self.path, exc)
        data = self._data
        return describe_data_failure(exc, len(data), lambda: _is_text(data[:512]))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Picture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- mode conversion ----------------------------------------------------------------------------------------------
def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _float_to_l(img: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:  # no 0..1 convention: stretch the image's own range
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L")


def _composite_on_white(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBa", "La"):  # premultiplied alpha: undo it first
        img = img.convert("RGBA" if img.mode == "RGBa" else "LA")
    base = _ALPHA[img.mode]
    background = Image.new(base, img.size, (255,) * len(base))
    background.paste(img.convert(base), mask=img.getchannel("A"))
    return background


def to_standard_mode(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as 8-bit ``L`` or ``RGB``; ``L`` when ``channels == 1`` (colour reduced to luminance)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        img = _sixteen_bit_to_l(img)
    elif mode == "F":
        img = _float_to_l(img)
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or img.has_transparency_data else "RGB")
    if img.mode in _ALPHA:
        img = _composite_on_white(img)
    if img.mode not in ("L", "RGB"):  # CMYK, YCbCr, HSV, RGBX...
        img = img.convert("RGB")
    if channels == 1 and img.mode == "RGB":
        img = img.convert("L")
    return img


def is_odd_mode(mode: str) -> bool:
    """Whether a stored mode is converted on load (anything but 8-bit grey or RGB)."""
    return mode not in ("L", "RGB")


def describe_mode(mode: str) -> str:
    """A stored Pillow mode with what loading does to it, for reports."""
    names = {
        "1": "1-bit", "P": "palette", "PA": "palette with alpha", "RGBA": "alpha, composited on white",
        "LA": "grey with alpha, composited on white", "F": "32-bit float", "I": "32-bit integer, scaled from "
        "0..65535", "RGBa": "premultiplied alpha", "La": "premultiplied alpha",
    }
    if mode.startswith("I;16"):
        return f"{mode} (16-bit grey, scaled to 8 bits)"
    return f"{mode} ({names[mode]})" if mode in names else mode
