"""CIFAR-10 / CIFAR-100 from their "python version" batches (pickled dicts), read with a restricted unpickler."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import ArraySource
from .folder import check_folder
from .safe_pickle import load_restricted
from .stats import IMAGENET_MEAN, IMAGENET_STD

LAYOUT = {
    # dataset: (folder name in the archive, train files, test files, label key, meta file, class-names key)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels",
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names"),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _text(key: Any) -> Any:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _read_batch(path: Path) -> dict[str, Any]:
    batch = load_restricted(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
    return {_text(k): v for k, v in batch.items()}


def cifar_root(dataset: str, path: str | None) -> Path:
    """The folder holding the batches: ``data.path`` itself or its ``cifar-10-batches-py`` sub-folder."""
    folder, train_files = LAYOUT[dataset][0], LAYOUT[dataset][1]
    root = check_folder(path, dataset, f"the extracted {folder} folder (or its parent) of the CIFAR 'python "
                                       f"version' archive (openjepa never downloads data)")
    if not (root / train_files[0]).exists() and (root / folder).is_dir():
        root = root / folder
    return root


@functools.lru_cache(maxsize=4)
def _load(root: str, files: tuple[str, ...], label_key: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        batch = _read_batch(Path(root) / name)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{Path(root) / name} lacks the '{'data' if 'data' not in batch else label_key}' entry "
                            f"of a CIFAR batch (is it the right CIFAR version?)")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{Path(root) / name}: expected uint8 data [N, 3072], found {data.dtype} {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> [N, H, W, C]
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _class_names(root: Path, dataset: str, num_labels: int) -> tuple[str, ...]:
    meta, key = LAYOUT[dataset][4], LAYOUT[dataset][5]
    if (root / meta).is_file():
        names = _read_batch(root / meta).get(key)
        if names is not None:
            return tuple(_text(n) for n in names)
    if dataset == "cifar10":
        return CIFAR10_CLASSES
    return tuple(str(k) for k in range(num_labels))


def cifar_source(dataset: str, path: str | None, split: str) -> ArraySource:
    """A split of CIFAR-10/100 with ImageNet normalisation statistics."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for {dataset}; use 'train' or 'test'")
    root = cifar_root(dataset, path)
    _, train_files, test_files, label_key, _, _ = LAYOUT[dataset]
    files = train_files if split == "train" else test_files
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root} lacks the {dataset} {split} file(s) {', '.join(missing)}; point data.path at the "
                        f"extracted {LAYOUT[dataset][0]} folder of the 'python version' archive")
    stamp = tuple(os.stat(root / f).st_mtime_ns for f in files)
    images, labels = _load(str(root), files, label_key, stamp)
    classes = _class_names(root, dataset, int(labels.max()) + 1)
    return ArraySource(dataset, split, images, labels, classes, (IMAGENET_MEAN, IMAGENET_STD))
