"""Keeping count of unreadable files across DataLoader worker processes.

Design: every process that meets an unreadable file (the main process or any worker, on any rank) appends one
JSON line to its own file ``unreadable-rank<R>-pid<P>.jsonl`` in a directory shared by all of them. The main
process reads that directory when it wants a summary.

Why files rather than sending the news back with the batches or through a queue: the collate function's output
(``MaskedBatch``) is the trainer's contract and carries no side information; a ``multiprocessing.Queue`` has
feeder threads that can hang a process at exit and does not reach other ranks. A few bytes appended per bad file
(a rare event) work the same with forked or spawned, persistent or not, workers and ranks, survive a crashed
worker, and give the trainer a record in its run folder when it passes one. Each process writes its own file, so
lines never interleave; a half-written last line (a killed process) is ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..run_folder import UNREADABLE_RECORDS, unreadable_record_name


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


def format_unreadable(records: list[BadFile], limit: int = 10, what: str = "unreadable image files") -> str:
    """``N what`` followed by the first ``limit`` paths with their reasons."""
    lines = [f"{len(records)} {what}:"]
    lines += [f"  {r.path}: {r.reason}" for r in records[:limit]]
    if len(records) > limit:
        lines.append(f"  ... and {len(records) - limit} more")
    return "\n".join(lines)


class BadFileTracker:
    """Records unreadable files from any process; ``summary()`` and ``count`` read every process's record.

    ``directory``: where the records go (e.g. the run's output folder, so they stay with the run); ``None``
    makes a private temporary directory, deleted when the tracker is garbage-collected in its creating process.
    """

    def __init__(self, directory: str | Path | None = None, rank: int = 0, folder: str | Path | None = None):
        if directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="openjepa-unreadable-"))
            weakref.finalize(self, _remove_if_owner, str(self.directory), os.getpid())
        else:
            self.directory = Path(directory)
            self.directory.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.folder = str(folder) if folder is not None else "DIR"  # the dataset folder, for the advice

    def record(self, path: str, reason: str) -> None:
        """Note that ``path`` could not be read (safe to call from any process)."""
        line = json.dumps({"path": path, "reason": reason}) + "\n"
        target = self.directory / unreadable_record_name(self.rank, os.getpid())
        with open(target, "a", encoding="utf-8") as f:
            f.write(line)

    def records(self) -> list[BadFile]:
        """Every distinct unreadable path recorded so far (by any process), sorted by path."""
        found: dict[str, str] = {}
        for file in sorted(self.directory.glob(UNREADABLE_RECORDS)):
            try:
                text = file.read_text(encoding="utf-8")
            except OSError:
                continue
            for line in text.splitlines():
                try:
                    item = json.loads(line)
                    found.setdefault(item["path"], item["reason"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a killed process
        return [BadFile(p, found[p]) for p in sorted(found)]

    @property
    def count(self) -> int:
        """How many distinct unreadable files were met."""
        return len(self.records())

    def summary(self, limit: int = 10) -> str | None:
        """One report of the unreadable files met (None when there were none)."""
        records = self.records()
        if not records:
            return None
        head = format_unreadable(records, limit, "unreadable image files were skipped (each time, another sample "
                                                 "took its place)")
        return head + f"\nRun `openjepa check-data {self.folder}` to list every unreadable file before training."

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "rank": self.rank, "folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)  # copies in workers never delete the directory


def _remove_if_owner(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked worker inherits the finaliser but must not delete the records
        shutil.rmtree(directory, ignore_errors=True)
