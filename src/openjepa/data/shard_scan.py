"""``openjepa check-data`` for tar shards: every sample decoded as training decodes it, damaged shards listed."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .images import UnreadableImage
from .scan import ImageCheck, SplitReport, SplitsVerdict, check_image
from .shard_index import SPLIT_PREFIXES
from .shards import ShardSource

_SOURCE: ShardSource | None = None  # the source pool workers read (inherited through fork, or rebuilt)


def _check(index: int) -> ImageCheck:
    try:
        data = _SOURCE.read(index)
    except UnreadableImage as exc:
        return ImageCheck(reason=exc.reason)
    return check_image(_SOURCE.describe(index), data)


def _init(source: ShardSource) -> None:
    global _SOURCE
    _SOURCE = source


def scan_shard_split(spec, split: str, workers: int = 0, progress: bool = True) -> SplitReport:
    source = ShardSource(spec, split)
    report = SplitReport(split, Path(source.paths[0]).parent, len(source), source.classes)
    report.unreadable += source.problems
    report.ignored.update({f"sample without an image ({kinds})": n for kinds, n in source.index.without_image.items()})
    bar = tqdm(total=len(source), desc=f"checking {split}", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 0:
            _init(source)
            checks = map(_check, range(len(source)))
            pool = None
        else:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = context.Pool(workers, initializer=_init, initargs=(source,))
            checks = pool.imap(_check, range(len(source)), chunksize=16)
        for index, check in enumerate(checks):
            report.add(source.describe(index), int(source.labels[index]), check)
            bar.update()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
    return report


@dataclass
class ShardReport(SplitsVerdict):
    """Findings for the splits of a set of shards (the same report as for folders)."""

    spec: object
    splits: list[SplitReport]

    def format(self, limit: int = 20) -> str:
        shown = self.spec if isinstance(self.spec, str) else " ".join(map(str, self.spec))
        return self._format(f"Shards {shown}: split(s) {' + '.join(s.name for s in self.splits)}", limit)


def scan_shards(spec, workers: int = 0, progress: bool = True) -> ShardReport:
    """Decode every sample of the shards ``spec`` names (a shard folder: its train and test splits)."""
    splits = [scan_shard_split(spec, "train", workers, progress)]
    if isinstance(spec, str) and Path(spec).expanduser().is_dir():
        root = Path(spec).expanduser()
        if any(next(root.glob(f"{prefix}-*.tar"), None) for prefix in SPLIT_PREFIXES["test"]):
            splits.append(scan_shard_split(spec, "test", workers, progress))
    return ShardReport(spec, splits)
