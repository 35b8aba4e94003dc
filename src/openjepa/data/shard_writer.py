"""Writing tar shards from a folder of images (``openjepa make-shards``).

Each image becomes one sample of two members: ``<key>.<ext>`` with the file's bytes as they are (no re-encoding)
and, when the folder has class sub-folders, ``<key>.cls`` with the class number in decimal; the class names go to
``classes.txt`` (line ``i`` names class ``i``). The key is a serial number plus the file's name
(``00000042_photo``), unique within the shards and still telling where the image came from.

Files are written in a shuffled order by default (a fixed seed): a folder lists its images class by class, and
training reads a shard's samples in sequence through a bounded shuffle buffer, which cannot undo a class-sorted
order. Every shard and ``classes.txt`` is written to a temporary file, flushed to disk and renamed, so an
interrupted run never leaves a half-written shard under a shard's name. Files that cannot be opened, or whose
header Pillow does not recognise, are left out and listed (pixels are not decoded: that would make writing shards
as slow as an epoch; training replaces any image that fails to decode later, as it does for folders).
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic_write import atomic_write, fsync_dir, make_readable
from ..errors import DataError
from .bad_files import BadFile
from .folder import FolderSource, folder_splits
from .images import Picture, UnreadableImage, describe_failure
from .shard_index import CLASSES_FILE

DEFAULT_SHARD_SIZE = 10_000
_BLOCK = 512
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class SplitShards:
    """What was written for one split."""

    split: str
    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    bytes: int = 0
    skipped: list[BadFile] = field(default_factory=list)

    @property
    def pattern(self) -> str:
        """The brace pattern naming these shards (what ``data.path`` takes)."""
        if not self.shards:
            return ""
        folder = self.shards[0].parent
        if len(self.shards) == 1:
            return str(self.shards[0])
        return str(folder / f"{self.split}-{{{0:06d}..{len(self.shards) - 1:06d}}}.tar")


def _key(serial: int, path: str) -> str:
    stem = os.path.basename(path).rsplit(".", 1)[0]
    return f"{serial:08d}_{_UNSAFE.sub('_', stem)[:60]}"


def _tar_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar file: its header and its data padded to whole blocks."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


class _ShardFile:
    """One shard being written to a temporary file in the output folder; ``commit`` renames it into place.

    Members are written with :meth:`tarfile.TarInfo.tobuf` headers (PAX when a name needs it) and the archive
    ends with the two zero blocks of the format, without ``tarfile``'s padding to 10 KiB records, so that
    ``--max-bytes`` holds exactly."""

    def __init__(self, path: Path):
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        make_readable(fd)
        self.file = os.fdopen(fd, "wb")
        self.samples = 0
        self.bytes = 2 * _BLOCK  # counting the end-of-archive blocks from the start

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same folder, the same bytes
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        padding = -len(data) % _BLOCK
        self.file.write(header + data + bytes(padding))
        self.bytes += len(header) + len(data) + padding

    def commit(self) -> None:
        self.file.write(bytes(2 * _BLOCK))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        Path(self.tmp).unlink(missing_ok=True)


def _read_image(path: str) -> bytes:
    """The bytes of an image file whose header Pillow recognises; :class:`UnreadableImage` otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UnreadableImage(path, describe_failure(path, exc)) from exc
    with Picture(path, data):  # header only: raises UnreadableImage with the reason
        pass
    return data


def write_split(source: FolderSource, out: Path, shard_size: int | None, max_bytes: int | None, seed: int | None,
                progress: bool = True) -> SplitShards:
    """Write the images of one folder split as ``out/<split>-NNNNNN.tar`` (see the module docstring)."""
    name = "val" if source.split_root.name == "val" else source.split
    result = SplitShards(name)
    order = np.arange(len(source)) if seed is None else np.random.default_rng(seed).permutation(len(source))
    labelled = bool(source.classes)
    current: _ShardFile | None = None
    bar = tqdm(total=len(source), desc=f"writing {name} shards", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for index in order:
            path = source.path(int(index))
            try:
                data = _read_image(path)
            except UnreadableImage as exc:
                result.skipped.append(BadFile(exc.path, exc.reason))
                bar.update()
                continue
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            added = _tar_bytes(len(data)) + (_tar_bytes(8) if labelled else 0)
            if current is not None and (
                    (shard_size is not None and current.samples >= shard_size)
                    or (max_bytes is not None and current.bytes + added > max_bytes)):
                current.commit()
                result.shards.append(current.path)
                result.bytes += current.bytes
                current = None
            if current is None:
                current = _ShardFile(out / f"{name}-{len(result.shards):06d}.tar")
            key = _key(result.samples, path)
            current.add(f"{key}.{ext}", data)
            label = int(source.labels[int(index)])
            if labelled and label >= 0:
                current.add(f"{key}.cls", str(label).encode("ascii"))
            current.samples += 1
            result.samples += 1
            bar.update()
            bar.set_postfix_str(f"{len(result.shards) + 1} shard(s)", refresh=False)
        if current is not None:
            current.commit()
            result.shards.append(current.path)
            result.bytes += current.bytes
            current = None
    finally:
        bar.close()
        if current is not None:  # an error or Ctrl-C: no half-written shard stays behind
            current.discard()
    return result


def write_shards(folder: str | Path, out: str | Path, shard_size: int | None = None, max_bytes: int | None = None,
                 seed: int | None = 0, overwrite: bool = False, progress: bool = True) -> list[SplitShards]:
    """Write every split of an image folder (``train``, and ``val``/``test`` when present) as tar shards in
    ``out``. ``shard_size``: images per shard (default 10,000 when ``max_bytes`` is not given); ``max_bytes``:
    shard size limit in bytes (a single larger image still gets a shard of its own); ``seed``: the shuffled write
    order (None: the folder's sorted order)."""
    if shard_size is not None and shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    if max_bytes is not None and max_bytes < 4 * _BLOCK:
        raise DataError(f"--max-bytes must be at least {4 * _BLOCK} bytes, got {max_bytes}")
    if shard_size is None and max_bytes is None:
        shard_size = DEFAULT_SHARD_SIZE
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"the image folder {root} {'is a file' if root.exists() else 'does not exist'}; give the "
                        f"folder holding your images (class sub-folders optional)")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"the output {out} is a file; give a folder for the shards")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise DataError(f"the output folder {out} is inside the image folder {root}; write the shards elsewhere")
    splits = folder_splits(root)
    sources = [FolderSource(root, "train")]
    if "val" in splits or "test" in splits:
        sources.append(FolderSource(root, "test"))
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for n in ("train", "val", "test") for p in out.glob(f"{n}-*.tar"))
    if existing and not overwrite:
        raise DataError(f"{out} already holds shards ({', '.join(existing[:3])}{' ...' if len(existing) > 3 else ''}); "
                        f"pass --overwrite to replace them, or choose another output folder")
    results = []
    for source in sources:
        result = write_split(source, out, shard_size, max_bytes, seed, progress)
        if result.samples == 0:
            raise DataError(f"no readable image in {source.split_root}: every file failed to open "
                            f"({result.skipped[0].path}: {result.skipped[0].reason} ...); run `openjepa check-data "
                            f"{root}` for the full list")
        written = {p.name for p in result.shards}
        for stale in out.glob(f"{result.split}-*.tar"):  # left by an earlier, larger run (--overwrite)
            if stale.name not in written:
                stale.unlink()
        results.append(result)
    classes = sources[0].classes
    if classes:
        with atomic_write(out / CLASSES_FILE, "w", shared=True) as f:
            f.write("".join(f"{c}\n" for c in classes))
    fsync_dir(out)
    return results


def parse_size(text: str) -> int:
    """``"500M"``, ``"1.5G"``, ``"200k"`` or a plain number of bytes (powers of 1024)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not found:
        raise DataError(f"--max-bytes {text!r} is not a size; use e.g. 500M, 1G or a number of bytes")
    number, unit = float(found.group(1)), found.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))
