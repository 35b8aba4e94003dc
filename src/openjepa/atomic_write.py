"""Writing a file all or nothing: the one helper behind checkpoints, ``config.yaml`` and CSV rewrites.

The content goes to a temporary file ``.NAME.<random>.tmp`` in the same folder, is flushed to disk, and is then
renamed over ``NAME``. A crash, a kill or a full disk mid-write leaves any previous ``NAME`` untouched; what can
be left behind is the temporary file, which :func:`openjepa.run_folder.remove_unfinished_writes` clears.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def make_readable(fd: int) -> None:
    """Give a temporary file the permissions of a normally created one (``mkstemp`` makes it owner-only, which
    would hide e.g. data shards from the other users and services of a cluster)."""
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.fchmod(fd, 0o666 & ~mask)
    except (OSError, AttributeError):  # no fchmod (Windows)
        pass


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", shared: bool = False) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "wb") as f: ...`` writes ``path`` atomically (``mode``: ``"w"`` text in UTF-8
    with untranslated newlines, or ``"wb"``). The temporary file is removed when the block raises. ``shared``:
    the file gets the permissions of a normally created one instead of owner-only (:func:`make_readable`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if shared:
        make_readable(fd)
    try:
        # Binary files get the bare two-argument call: tests stand in for os.fdopen with a full-disk simulator.
        handle = os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8", newline="")
        with handle as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename) to disk where the platform allows; silently skipped elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
