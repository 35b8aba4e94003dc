"""Folders of image files: ``root/class/.../image.jpg`` (labelled), ``root/.../image.jpg`` (unlabelled), or an
ImageNet-like ``root/train`` + ``root/val`` (or ``root/test``) pair of splits.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ImageSource
from .images import IMAGE_EXTENSIONS, Picture
from .stats import IMAGENET_MEAN, IMAGENET_STD

HELD_OUT_DIRS = ("val", "test")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(name: str) -> bool:
    # Hidden entries are skipped: macOS "._photo.jpg" resource forks and ".ipynb_checkpoints" copies look like
    # images but are not (or are duplicates).
    return not name.startswith(".")


@dataclass
class FolderListing:
    """Image files under a folder (relative paths, sorted) and counts of the other files by extension."""

    root: Path
    files: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def list_images(root: str | Path) -> FolderListing:
    """All image files under ``root``, recursively, following symbolic links (each real folder visited once).

    Broken symbolic links with an image extension are listed: they are reported as unreadable when loaded, like
    any other bad file, instead of vanishing silently.
    """
    root = Path(root)
    listing = FolderListing(root)
    seen: set[tuple[int, int]] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop or a second link to the same folder
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if _visible(d))
        rel = os.path.relpath(folder, root)
        for name in sorted(n for n in names if _visible(n)):
            if _is_image_name(name):
                listing.files.append(name if rel == "." else os.path.join(rel, name))
            else:
                listing.ignored[Path(name).suffix.lower() or "(no extension)"] += 1
    listing.files.sort()
    return listing


def check_folder(path: str | Path | None, dataset: str = "folder",
                 expected: str = "a folder holding your images (e.g. data.path=/data/my_images)") -> Path:
    """``path`` as an existing directory, or a :class:`DataError` saying what is wrong; ``expected`` describes
    the folder ``data.dataset`` needs, for the messages."""
    if path is None:
        raise DataError(f"data.dataset={dataset} needs data.path: {expected}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; check the spelling, or mount/copy the data there "
                        f"(data.dataset={dataset} needs {expected})")
    if not path.is_dir():
        hint = " (an archive: extract it first and point data.path at the extracted folder)" \
            if path.suffix.lower() in (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z") else ""
        raise DataError(f"data.path {path} is a file, but data.dataset={dataset} expects a folder{hint}: {expected}")
    return path


def folder_splits(root: Path) -> dict[str, Path]:
    """The split folders: ``train``/``val``/``test`` sub-folders when present, else the whole folder as train."""
    if (root / "train").is_dir() and any((root / d).is_dir() for d in HELD_OUT_DIRS):
        splits = {"train": root / "train"}
        splits.update({d: root / d for d in HELD_OUT_DIRS if (root / d).is_dir()})
        return splits
    return {"train": root}


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` (``test`` falls back to ``val`` and vice versa)."""
    splits = folder_splits(root)
    wanted = {"train": ("train",), "test": ("test", "val"), "val": ("val", "test")}.get(split)
    if wanted is None:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    for name in wanted:
        if name in splits:
            return splits[name]
    raise DataError(
        f"folder {root} has no test split: it has no train/ and val/ (or test/) sub-folders, so all its images "
        f"form the training split. To evaluate on held-out images, arrange them as {root}/train/<class>/... and "
        f"{root}/val/<class>/..."
    )


def class_names(split_root: Path) -> tuple[str, ...]:
    """Sorted names of the first-level sub-folders that hold at least one image (at any depth)."""
    names = []
    for entry in sorted(os.scandir(split_root), key=lambda e: e.name):
        if entry.is_dir() and _visible(entry.name) and _holds_image(Path(entry.path)):
            names.append(entry.name)
    return tuple(names)


def _holds_image(folder: Path) -> bool:
    for _, dirs, names in os.walk(folder, followlinks=True):
        if any(_is_image_name(n) and _visible(n) for n in names):
            return True
        dirs[:] = [d for d in dirs if _visible(d)]
    return False


def _no_images_message(root: Path, listing: FolderListing) -> str:
    searched = ", ".join(IMAGE_EXTENSIONS)
    message = f"no images found in {root} (searched all sub-folders for {searched}, in any letter case)"
    if listing.ignored:
        top = ", ".join(f"{n} {ext}" for ext, n in listing.ignored.most_common(5))
        message += f"; it holds other files: {top}"
    names = {p.name for p in root.iterdir()}
    if any("idx3-ubyte" in n for n in names):
        message += "; these look like IDX files: use data.dataset=idx (or mnist / fashion_mnist)"
    elif names & {"data_batch_1", "cifar-10-batches-py"}:
        message += "; these look like CIFAR-10 python batches: use data.dataset=cifar10"
    elif names & {"cifar-100-python"} or {"train", "test", "meta"} <= names:
        message += "; these look like CIFAR-100 python batches: use data.dataset=cifar100"
    return message


class PathTable:
    """Many relative paths in two numpy arrays instead of a list of str objects.

    DataLoader workers are forked; touching Python objects writes their reference counts, which copies the
    memory pages of a list of a million paths into every worker. Numpy buffers are never written, so stay shared.
    """

    def __init__(self, paths: list[str]):
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._blob[start:end].tobytes().decode("utf-8", "surrogateescape")


class FolderSource(ImageSource):
    """One split of a folder dataset; labels come from the split's first-level sub-folders."""

    in_memory = False

    def __init__(self, root: str | Path, split: str = "train"):
        self.name, self.split = "folder", split
        self.root = check_folder(root)
        self.split_root = split_folder(self.root, split)
        listing = list_images(self.split_root)
        if not listing.files:
            raise DataError(_no_images_message(self.split_root, listing))
        train_root = split_folder(self.root, "train")
        self.classes = class_names(train_root)
        self.labels = self._labels(listing.files)
        self.paths = PathTable(listing.files)
        self.ignored = listing.ignored
        self.stats = (IMAGENET_MEAN, IMAGENET_STD)

    def _labels(self, files: list[str]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.classes)}
        tops = [f.split(os.sep, 1)[0] if os.sep in f else None for f in files]
        unknown = sorted({t for t in tops if t is not None and t not in index})
        if unknown:
            raise DataError(
                f"{self.split_root} has class folders that the training split lacks: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''}; the {self.split} split must use the training classes"
            )
        return np.array([index[t] if t is not None else -1 for t in tops], dtype=np.int64)

    def path(self, index: int) -> str:
        return os.path.join(self.split_root, self.paths[index])

    def open(self, index: int) -> Picture:
        return Picture(self.path(index))

    def describe(self, index: int) -> str:
        return self.path(index)
