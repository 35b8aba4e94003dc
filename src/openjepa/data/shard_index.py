"""Tar shards (the WebDataset layout) on local paths: finding them and indexing their samples.

A shard is a plain, uncompressed POSIX tar file. Consecutive members whose names share a *key* -- the member path
up to the first dot of its file name -- form one sample: ``cat/0001.jpg`` + ``cat/0001.cls`` is the sample
``cat/0001`` with an image and a label. The image is the first member whose extension (everything after that
first dot) is an image extension openjepa reads; the label is the decimal integer in the ``.cls`` member (``-1``
when there is none). Other members (``.json``, ``.txt``...) are ignored.

Indexing reads the tar headers only (Python's :mod:`tarfile` seeks past every member's data), plus the few bytes of
each ``.cls`` member: a shard of 10,000 samples is indexed without reading its images. The index gives every sample
a stable number (shards in the order given, members in stored order), the byte range of its image, and its
label -- which is what lets training read shards sequentially and still key each sample exactly (see
:mod:`openjepa.data.shards`).
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from .bad_files import BadFile
from .folder import PathTable
from .images import IMAGE_EXTENSIONS

CLASSES_FILE = "classes.txt"  # one class name per line, written by `openjepa make-shards`
SPLIT_PREFIXES = {"train": ("train",), "test": ("test", "val"), "val": ("val", "test")}
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_MAX_EXPANSION = 1_000_000


# -- shard names: brace ranges, brace lists, globs, lists -----------------------------------------------------------
def _brace_options(body: str) -> list[str] | None:
    """The alternatives of a brace group's body (``a,b`` or ``000..127``), None when it is not an expansion."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if parts:
        return parts + [body[start:]]
    found = _RANGE.match(body)
    if not found:
        return None
    first, last = found.groups()
    lo, hi = int(first), int(last)
    if abs(hi - lo) >= _MAX_EXPANSION:
        raise DataError(f"the brace range {{{body}}} names more than {_MAX_EXPANSION:,} files")
    padded = any(len(t.lstrip("-")) > 1 and t.lstrip("-").startswith("0") for t in (first, last))
    width = max(len(first), len(last)) if padded else 0
    step = 1 if hi >= lo else -1
    return [f"{n:0{width}d}" if width else str(n) for n in range(lo, hi + step, step)]


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` lists
    alternatives; groups nest and combine left to right. Braces that expand nothing (``{}``, ``{abc}``) stay."""
    search = 0
    while True:
        start = pattern.find("{", search)
        if start < 0:
            return [pattern]
        depth = 0
        for end in range(start, len(pattern)):
            if pattern[end] == "{":
                depth += 1
            elif pattern[end] == "}":
                depth -= 1
                if depth == 0:
                    break
        else:
            return [pattern]  # an unmatched brace is literal, as in the shell
        options = _brace_options(pattern[start + 1:end])
        if options is None:
            search = start + 1
            continue
        head, tail = pattern[:start], pattern[end + 1:]
        return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def expand_shard_paths(spec: str | tuple[str, ...] | list[str]) -> list[str]:
    """The shard files named by ``spec``: one pattern or a list of them, each with brace ranges/lists and glob
    wildcards; in the order given (glob matches sorted), duplicates removed. Missing files are an error."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise DataError("data.path is an empty list; name the shard files, e.g. data.path=/data/train-{000..127}.tar")
    found: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        for name in expand_braces(os.path.expanduser(str(pattern))):
            if glob.has_magic(name):
                matches = sorted(glob.glob(name))
                if not matches:
                    missing.append(name)
                found.extend(matches)
            elif os.path.isfile(name):
                found.append(name)
            else:
                missing.append(name)
    if missing:
        first = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        what = "names no file" if len(missing) == 1 else "name no files"
        raise DataError(f"data.path {_show(spec)}: {len(missing)} pattern(s)/path(s) {what}: {first}. Check the "
                        f"brace range against the shard files that exist (e.g. ls {_parent(missing[0])})")
    folders = [p for p in found if os.path.isdir(p)]
    if folders:
        raise DataError(f"data.path {_show(spec)} matches folders ({', '.join(folders[:3])}); with "
                        f"data.dataset=shards it must name .tar files, or be one folder written by "
                        f"`openjepa make-shards`")
    return list(dict.fromkeys(found))


def _show(spec) -> str:
    return spec if isinstance(spec, str) else "[" + ", ".join(map(str, spec)) + "]"


def _parent(path: str) -> str:
    return os.path.dirname(path) or "."


def _split_of(name: str) -> str | None:
    stem = name[:-len(".tar")]
    prefix = stem.rsplit("-", 1)[0] if "-" in stem else None
    return prefix if prefix in ("train", "val", "test") else None


def shard_paths(spec: str | tuple[str, ...] | list[str] | None, split: str = "train") -> list[str]:
    """The shards of ``split``. ``spec`` is either a folder (what ``make-shards`` writes: ``train-*.tar`` and
    optionally ``val-*.tar`` / ``test-*.tar``; a folder of other ``.tar`` names is one training split) or
    patterns naming the training shards only."""
    if spec is None:
        raise DataError("data.dataset=shards needs data.path: shard files such as /data/train-{000..127}.tar, or "
                        "the folder written by `openjepa make-shards`")
    wanted = SPLIT_PREFIXES.get(split)
    if wanted is None:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if isinstance(spec, str) and os.path.isdir(os.path.expanduser(spec)):
        root = Path(os.path.expanduser(spec))
        tars = sorted(p.name for p in root.iterdir() if p.name.endswith(".tar") and not p.name.startswith("."))
        if not tars:
            raise DataError(f"data.path {root} holds no .tar shard; write some with `openjepa make-shards "
                            f"IMAGE_FOLDER {root}`, or use data.dataset=folder for a folder of images")
        by_split: dict[str | None, list[str]] = {}
        for name in tars:
            by_split.setdefault(_split_of(name), []).append(str(root / name))
        if set(by_split) == {None}:
            by_split = {"train": by_split[None]}
        for name in wanted:
            if name in by_split:
                return by_split[name]
        if split == "train":
            raise DataError(f"data.path {root} holds shards of the splits {sorted(k for k in by_split if k)} but "
                            f"no train-*.tar")
        raise DataError(f"shard folder {root} has no test split (no val-*.tar or test-*.tar next to the training "
                        f"shards)")
    if split != "train":
        raise DataError(f"data.path {_show(spec)} names training shards only, so there is no test split; to "
                        f"evaluate on held-out shards, point data.path at a folder holding train-*.tar and "
                        f"val-*.tar (what `openjepa make-shards` writes for a folder with train/ and val/)")
    return expand_shard_paths(spec)


# -- the index ------------------------------------------------------------------------------------------------------
@dataclass
class ShardIndex:
    """Every sample of a list of shards: which shard, where its image bytes are, its label and its name."""

    paths: list[str]
    shard: np.ndarray  # int32 [N]
    offset: np.ndarray  # int64 [N], byte offset of the image member's data in its shard
    size: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N], -1 when unlabelled
    names: PathTable  # image member names
    classes: tuple[str, ...] = ()
    problems: list[BadFile] = field(default_factory=list)  # unreadable shards, damaged tails, bad labels
    without_image: Counter = field(default_factory=Counter)  # samples skipped for lack of an image, by extension

    def __len__(self) -> int:
        return len(self.shard)

    def counts(self) -> np.ndarray:
        """Samples per shard."""
        return np.bincount(self.shard, minlength=len(self.paths))


def _member_parts(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name: ``a/b/x.seg.png`` -> ``("a/b/x", "seg.png")``."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _is_image_ext(ext: str) -> bool:
    return ("." + ext) in IMAGE_EXTENSIONS  # "jpg", "png"...; not "seg.png" (a second image of the sample)


@dataclass
class _Scan:
    samples: list[tuple[str, int, int, int]] = field(default_factory=list)  # name, offset, size, label
    problems: list[BadFile] = field(default_factory=list)
    without_image: Counter = field(default_factory=Counter)


def _open_failure(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "shard not found (moved or deleted after it was listed)"
    if isinstance(exc, PermissionError):
        return "permission denied (make the shard readable, e.g. chmod a+r)"
    return f"cannot be read ({exc.strerror or exc})"


class TarDamaged(Exception):
    """A tar header that is not one (bad checksum, garbage) or that the file ends inside."""


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular file (old and new flags), contiguous file


def _pread(f, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(f.fileno(), size, offset)
    f.seek(offset)
    return f.read(size)


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU/star base-256 when the first byte has its high bit set."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """``key=value`` records of a PAX extended header: ``"<length> <key>=<value>\\n"`` each."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"", b"\0"):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key] = value
        pos += length
    return records


def tar_members(f, total: int):
    """``(name, data_offset, size, head)`` of every regular-file member of an uncompressed tar file opened in
    binary mode, reading headers only (``head``: the member's first bytes when they came with its header,
    enough for small members such as ``.cls``). Handles ustar prefixes, GNU long names and PAX ``path``/``size``
    records; raises :class:`TarDamaged` at the first bad header or truncated member."""
    offset = 0
    long_name: bytes | None = None
    pax: dict[bytes, bytes] = {}
    while True:
        if offset + _BLOCK > total:
            if offset < total:
                raise TarDamaged(f"the file ends inside a header at byte {offset}")
            return  # the end-of-archive blocks are missing, but every member is whole
        chunk = _pread(f, 2 * _BLOCK, offset)
        header = chunk[:_BLOCK]
        if header == _ZERO_BLOCK:
            return
        try:
            stored = _number(header[148:156])
            size = _number(header[124:136])
        except ValueError:
            raise TarDamaged(f"not a tar header at byte {offset}") from None
        if stored != sum(header) - sum(header[148:156]) + 8 * 32:
            raise TarDamaged(f"not a tar header at byte {offset} (bad checksum)")
        kind = header[156:157]
        data = offset + _BLOCK
        if kind in (b"L", b"x", b"g"):  # the data describes the next member (g: all members; ignored)
            body = _pread(f, size, data)
            if len(body) < size:
                raise TarDamaged(f"the file ends inside an extended header at byte {offset}")
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0]
            elif kind == b"x":
                pax = _pax_records(body)
            offset = data + -(-size // _BLOCK) * _BLOCK
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        name = pax.get(b"path", long_name or name)
        if b"size" in pax:
            size = int(pax[b"size"])
        long_name, pax = None, {}
        if data + size > total:
            raise TarDamaged(f"the file ends inside member {name.decode('utf-8', 'replace')!r} ({total} bytes)")
        if kind in _FILE_TYPES:
            yield name.decode("utf-8", "surrogateescape"), data, size, chunk[_BLOCK:_BLOCK + size]
        offset = data + -(-size // _BLOCK) * _BLOCK


def scan_shard(path: str) -> _Scan:
    """The samples of one shard, in stored order; a damaged shard keeps the samples before the damage."""
    scan = _Scan()
    try:
        f = open(path, "rb", buffering=0)
    except OSError as exc:
        scan.problems.append(BadFile(path, _open_failure(exc)))
        return scan
    with f:
        total = os.fstat(f.fileno()).st_size
        if total == 0:
            scan.problems.append(BadFile(path, "empty file (0 bytes)"))
            return scan
        key = None
        image: tuple[str, int, int] | None = None
        label, others, members = -1, [], 0

        def flush() -> None:
            if key is None:
                return
            if image is None:
                scan.without_image[",".join(sorted(others)) or "(nothing)"] += 1
            else:
                scan.samples.append((image[0], image[1], image[2], label))

        try:
            for name, start, size, head in tar_members(f, total):
                members += 1
                member_key, ext = _member_parts(name)
                if member_key != key:
                    flush()
                    key, image, label, others = member_key, None, -1, []
                if ext == "cls":
                    text = head if len(head) == size else _pread(f, min(size, 64), start)
                    try:
                        label = int(text.decode("ascii").strip())
                    except (UnicodeDecodeError, ValueError):
                        scan.problems.append(BadFile(f"{path}:{name}", f"label member holds {text[:20]!r}, not an "
                                                                       f"integer: the sample is unlabelled (-1)"))
                elif image is None and _is_image_ext(ext):
                    image = (name, start, size)
                else:
                    others.append(ext or "(no extension)")
        except (TarDamaged, OSError) as exc:
            what = "not a tar file (shards must be plain, uncompressed .tar files)" if members == 0 else \
                f"damaged after {members} members ({exc}): the samples before the damage are used"
            if members == 0 and not isinstance(exc, OSError):
                what += f": {exc}"
            scan.problems.append(BadFile(path, what))
            image = None  # the sample being gathered may be incomplete
        flush()
    return scan


def _read_classes(paths: list[str]) -> tuple[str, ...] | None:
    names = Path(paths[0]).parent / CLASSES_FILE
    try:
        lines = names.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return tuple(line.strip() for line in lines if line.strip())


def build_index(paths: list[str], progress: bool | None = None) -> ShardIndex:
    """Index ``paths`` (headers only). ``progress``: a progress bar (None: for many shards on a terminal)."""
    shard, offset, size, label, names = [], [], [], [], []
    problems: list[BadFile] = []
    without = Counter()
    disable = (len(paths) < 16 or None) if progress is None else not progress
    for number, path in enumerate(tqdm(paths, desc="indexing shards", unit="shard", disable=disable,
                                       dynamic_ncols=True)):
        scan = scan_shard(path)
        problems += scan.problems
        without.update(scan.without_image)
        for name, start, length, cls in scan.samples:
            shard.append(number)
            offset.append(start)
            size.append(length)
            label.append(cls)
            names.append(name)
    labels = np.asarray(label, dtype=np.int64)
    classes = _read_classes(paths)
    if classes is None:
        classes = tuple(str(c) for c in range(int(labels.max()) + 1)) if len(labels) and labels.max() >= 0 else ()
    elif len(labels) and labels.max() >= len(classes):
        raise DataError(f"{Path(paths[0]).parent / CLASSES_FILE} lists {len(classes)} classes but the shards hold "
                        f"label {int(labels.max())}; the file belongs to other shards")
    return ShardIndex(list(paths), np.asarray(shard, dtype=np.int32), np.asarray(offset, dtype=np.int64),
                      np.asarray(size, dtype=np.int64), labels, PathTable(names), classes, problems, without)


_CACHE: dict[tuple, ShardIndex] = {}


def load_index(paths: list[str]) -> ShardIndex:
    """:func:`build_index`, remembered in this process while the shards' sizes and modification times stay the
    same (the trainer, the monitor and the final probe all ask for the same shards)."""
    stamp = []
    for p in paths:
        try:
            st = os.stat(p)
            stamp.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((p, -1, -1))
    key = tuple(stamp)
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = build_index(paths)
    return _CACHE[key]
