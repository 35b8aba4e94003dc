"""Scanning a folder dataset before training: what ``openjepa check-data`` reports.

Every image is decoded exactly as training decodes it, so the files reported unreadable are exactly those the
loader would replace, and the odd modes listed are those it converts.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .bad_files import BadFile, format_unreadable
from .folder import FolderSource, check_folder, folder_splits
from .images import Picture, UnreadableImage, describe_mode, is_odd_mode
from .stats import Moments

SMALL_SIDE = 32  # images with a side below this are upscaled a lot: worth a mention
EXTREME_ASPECT = 10.0
MAX_LISTED_CLASSES = 30


@dataclass
class ImageCheck:
    """What decoding one file found (small, so that it travels cheaply from pool workers)."""

    mode: str | None = None
    size: tuple[int, int] | None = None
    moments: Moments | None = None  # of R, G, B and luminance
    reason: str | None = None


def check_image(path: str, data: bytes | None = None) -> ImageCheck:
    """Decode ``path`` (or ``data``, the bytes of the image ``path`` names) like the loader does and gather its
    mode, size and pixel moments."""
    try:
        with Picture(path, data) as picture:
            img = picture.decode(3)
            mode, size = picture.mode, picture.size
    except UnreadableImage as exc:
        return ImageCheck(reason=exc.reason)
    if img.mode == "L":
        grey = Moments(1).add(np.asarray(img))
        moments = Moments(4)
        moments.count, moments.sum[:], moments.sum_sq[:] = grey.count, grey.sum[0], grey.sum_sq[0]
    else:  # luminance: exactly what a grey model would see
        moments = Moments(4).add(np.dstack([np.asarray(img), np.asarray(img.convert("L"))]))
    return ImageCheck(mode, size, moments)


@dataclass
class SplitReport:
    """Findings for one split folder."""

    name: str
    root: Path
    listed: int = 0
    classes: tuple[str, ...] = ()
    class_counts: Counter = field(default_factory=Counter)
    unlabelled: int = 0  # images outside the class folders (label -1)
    converted: Counter = field(default_factory=Counter)
    unreadable: list[BadFile] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    small: int = 0
    extreme: int = 0
    moments: Moments = field(default_factory=lambda: Moments(4))

    @property
    def readable(self) -> int:
        return self.listed - len(self.unreadable)

    def add(self, path: str, label: int, check: ImageCheck) -> None:
        if check.reason is not None:
            self.unreadable.append(BadFile(path, check.reason))
            return
        if label >= 0:
            self.class_counts[self.classes[label]] += 1
        else:
            self.unlabelled += 1
        if is_odd_mode(check.mode):
            self.converted[check.mode] += 1
        w, h = check.size
        self.small += min(w, h) < SMALL_SIDE
        self.extreme += max(w, h) > EXTREME_ASPECT * min(w, h)
        self.moments.merge(check.moments)


def _map(paths: list[str], workers: int, desc: str, progress: bool):
    """``check_image`` over ``paths`` in order, in ``workers`` processes (0: this process)."""
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 0:
            for path in paths:
                yield check_image(path)
                bar.update()
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers) as pool:
            for check in pool.imap(check_image, paths, chunksize=16):
                yield check
                bar.update()
    finally:
        bar.close()


def scan_split(root: Path, split: str, workers: int = 0, progress: bool = True) -> SplitReport:
    source = FolderSource(root, split)
    report = SplitReport(split, source.split_root, len(source), source.classes, ignored=source.ignored)
    paths = [source.path(i) for i in range(len(source))]
    for i, check in enumerate(_map(paths, workers, f"checking {split}", progress)):
        report.add(paths[i], int(source.labels[i]), check)
    return report


class SplitsVerdict:
    """What a folder's and a shard set's reports share: ``splits`` (training split first), whether training can
    run, and the text of the per-split findings with the verdict."""

    splits: list[SplitReport]

    @property
    def usable(self) -> bool:
        """Training can run: the training split has at least one readable image."""
        return self.splits[0].readable > 0

    def _format(self, header: str, limit: int) -> str:
        lines = [header]
        for split in self.splits:
            lines += _format_split(split, limit)
        verdict = (f"usable: {self.splits[0].readable:,} readable training images" if self.usable else
                   "NOT usable: no readable training image")
        lines.append(f"Result: {verdict}")
        return "\n".join(lines)


@dataclass
class FolderReport(SplitsVerdict):
    """Findings for a whole folder dataset (one report per split)."""

    root: Path
    splits: list[SplitReport]

    def format(self, limit: int = 20) -> str:
        if len(self.splits) > 1:
            layout = "splits " + " + ".join(f"{s.name}/" for s in self.splits)
        else:
            layout = "a single training split (no train/ + val/ or test/ sub-folders)"
        return self._format(f"Folder {self.root}: {layout}", limit)


def _format_counts(counts: Counter, limit: int = 8) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in counts.most_common(limit)) + (" ..." if len(counts) > limit else "")


def _format_classes(split: SplitReport) -> str:
    if not split.classes:
        return "classes: none (no class sub-folders: images are unlabelled)"
    counts = [split.class_counts.get(c, 0) for c in split.classes]
    text = f"classes: {len(split.classes)}"
    if len(split.classes) <= MAX_LISTED_CLASSES:
        text += " (" + ", ".join(f"{c} {n:,}" for c, n in zip(split.classes, counts)) + ")"
    else:
        smallest = sorted(zip(counts, split.classes))[:5]
        text += (f", {min(counts):,} to {max(counts):,} images each (median {int(np.median(counts)):,}); "
                 f"smallest: " + ", ".join(f"{c} {n:,}" for n, c in smallest))
    if split.unlabelled:
        text += f"; {split.unlabelled:,} images outside the class folders (unlabelled)"
    return text


def _format_split(split: SplitReport, limit: int) -> list[str]:
    lines = [f"[{split.name}] {split.root}",
             f"  images: {split.readable:,} readable of {split.listed:,} listed",
             f"  {_format_classes(split)}"]
    if split.ignored:
        lines.append(f"  ignored (not an image extension): {sum(split.ignored.values()):,} files: "
                     f"{_format_counts(split.ignored)}")
    if split.converted:
        modes = Counter({describe_mode(m): n for m, n in split.converted.items()})
        lines.append(f"  converted on load: {sum(modes.values()):,} images: {_format_counts(modes)}")
    if split.small or split.extreme:
        lines.append(f"  note: {split.small:,} images with a side under {SMALL_SIDE} px (upscaled), "
                     f"{split.extreme:,} with an aspect ratio beyond {EXTREME_ASPECT:g}:1 (crops squash them)")
    if split.readable:
        mean, std = split.moments.stats()
        (rgb_mean, rgb_std), (grey_mean, grey_std) = (mean[:3], std[:3]), (mean[3:], std[3:])
        lines.append(f"  pixel statistics: RGB mean {_fmt(rgb_mean)} std {_fmt(rgb_std)}; grey mean {_fmt(grey_mean)} "
                     f"std {_fmt(grey_std)} (defaults are ImageNet's; to use these, set data.mean and data.std)")
    if split.unreadable:
        lines += ["  " + line for line in format_unreadable(
            split.unreadable, limit, "unreadable files (training skips them and uses other samples)").splitlines()]
    return lines


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def scan_folder(root: str | Path, workers: int = 0, progress: bool = True) -> FolderReport:
    """Decode every image of every split of a folder dataset (raises :class:`DataError` for a bad folder)."""
    root = check_folder(root)
    names = list(folder_splits(root))
    return FolderReport(root, [scan_split(root, name, workers, progress) for name in names])
