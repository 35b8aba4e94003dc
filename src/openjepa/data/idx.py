"""IDX files (the MNIST family's format), gzip-compressed or raw, parsed with numpy.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ArraySource
from .folder import check_folder
from .stats import Stats, pixel_stats

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian/Ubuntu package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
# Where other tools keep these files under a data root (e.g. <root>/FashionMNIST/raw/...).
_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array stored in the bytes of an (uncompressed) IDX file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(f"{name} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}; expected "
                        f"00 00 <type code> <number of dimensions>)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name}: IDX header is truncated or declares {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{name}: IDX header declares shape {shape} ({expected} bytes) but the file holds "
                        f"{len(data)} bytes; the file is truncated or corrupt (download it again)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an IDX file; gzip compression is recognised by content, whatever the file name."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}); download it again") from exc
    return parse_idx(raw, str(path))


def _candidates(split: str, kind: str) -> list[str]:
    prefix, tag = SPLIT_PREFIX[split], {"images": "idx3", "labels": "idx1"}[kind]
    names = [f"{prefix}-{kind}-{tag}-ubyte", f"{prefix}-{kind}.{tag}-ubyte"]  # the second: some unpackers' naming
    return [n + ext for n in names for ext in (".gz", "")]


def find_idx_files(root: Path, split: str) -> tuple[Path, Path]:
    """The images and labels files of ``split`` under ``root`` (or its ``raw`` sub-folders)."""
    found = {}
    for kind in ("images", "labels"):
        for sub in _SUBDIRS:
            hits = [root / sub / n for n in _candidates(split, kind) if (root / sub / n).is_file()]
            if hits:
                found[kind] = hits[0]
                break
    missing = [_candidates(split, k)[1].removesuffix(".gz") + "[.gz]" for k in ("images", "labels") if k not in found]
    if missing:
        present = sorted(p.name for p in root.iterdir())[:12] if root.is_dir() else []
        raise DataError(
            f"{root} lacks the IDX files of the {split} split: {' and '.join(missing)} (gz or raw). "
            f"Files there: {', '.join(present) or 'none'}"
        )
    return found["images"], found["labels"]


@functools.lru_cache(maxsize=4)
def _load_cached(images: str, labels: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    pixels = read_idx(images)
    if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[3] not in (1, 3)):
        raise DataError(f"{images}: expected uint8 images [N, H, W] (or [N, H, W, 1|3]), found "
                        f"{pixels.dtype} {pixels.shape}")
    if pixels.ndim == 4 and pixels.shape[3] == 1:
        pixels = pixels[..., 0]
    targets = read_idx(labels)
    if targets.ndim != 1 or targets.dtype.kind not in "iu":
        raise DataError(f"{labels}: expected integer labels [N], found {targets.dtype} {targets.shape}")
    if len(targets) != len(pixels):
        raise DataError(f"{images} holds {len(pixels)} images but {labels} holds {len(targets)} labels")
    if len(targets) and targets.min() < 0:
        raise DataError(f"{labels} holds negative labels")
    return pixels, targets.astype(np.int64)


def load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, H, W(, 3)]`` uint8 and labels of a split; cached (read-only arrays, shared by datasets)."""
    images, labels = find_idx_files(root, split)
    stamp = tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (images, labels))
    return _load_cached(str(images), str(labels), stamp)


@functools.lru_cache(maxsize=8)
def _stats_cached(root: str, split: str, stamp: tuple) -> Stats:
    return pixel_stats(load_idx_split(Path(root), split)[0])


def idx_stats(root: Path, split: str) -> Stats:
    """Pixel statistics of the training images (of ``split`` when there are no training files)."""
    try:
        find_idx_files(root, "train")
        split = "train"
    except DataError:
        pass
    images, _ = find_idx_files(root, split)
    return _stats_cached(str(root), split, (os.stat(images).st_mtime_ns,))


def idx_root(dataset: str, path: str | None) -> Path:
    """The folder of an IDX dataset, with the default location of ``fashion_mnist``."""
    if path is None:
        if dataset == "fashion_mnist":
            root = Path(FASHION_MNIST_DIR)
            if not root.is_dir():
                raise DataError(
                    f"Fashion-MNIST is not installed at its default location {root}: install it with "
                    f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
                    f"*-ubyte.gz files and pass data.path=FOLDER"
                )
            return root
    return check_folder(path, dataset, "a folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte"
                        "[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (openjepa never "
                        "downloads data)")


def idx_source(dataset: str, path: str | None, split: str) -> ArraySource:
    """A split of an IDX dataset (``idx``, ``mnist`` or ``fashion_mnist``)."""
    if split not in SPLIT_PREFIX:
        raise DataError(f"unknown split {split!r} for {dataset}; use 'train' or 'test'")
    root = idx_root(dataset, path)
    images, labels = load_idx_split(root, split)
    if dataset == "fashion_mnist":
        classes = FASHION_MNIST_CLASSES
    elif dataset == "mnist":
        classes = MNIST_CLASSES
    else:
        classes = tuple(str(k) for k in range(int(labels.max()) + 1 if len(labels) else 0))
    if len(labels) and labels.max() >= len(classes):
        raise DataError(f"{dataset} labels go up to {labels.max()} but the dataset has {len(classes)} classes; "
                        f"use data.dataset=idx for IDX files with other labels")
    return ArraySource(dataset, split, images, labels, classes, idx_stats(root, split))
