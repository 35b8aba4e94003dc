"""``openjepa check-data DIR``: scan a folder of images before training and report what the loader will see."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.loader import available_cpus
from ..data.scan import scan_folder
from ..data.shard_scan import scan_shards
from ..errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-data",
        help="scan a folder of images: counts per class, odd formats, unreadable files",
        description="Decode every image of a folder dataset exactly as training does and report the number of "
                    "images, the classes and their counts, files in odd modes that will be converted, and "
                    "unreadable files with the reason (training skips those). Exit status 0 when the folder is "
                    "usable for training, 1 when it holds no readable image.",
    )
    parser.add_argument("directory", nargs="+",
                        help="the folder (class sub-folders optional; train/ + val/ splits detected), or tar shards: "
                             "a folder of .tar files, shard files, or patterns such as 'train-{000..127}.tar'")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: the available CPUs, at most 8; 0: this process)")
    parser.add_argument("--limit", type=int, default=20, help="unreadable files listed per split (default 20)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _is_shards(paths: list[str]) -> bool:
    if len(paths) > 1 or ".tar" in paths[0]:
        return True
    folder = Path(paths[0]).expanduser()
    return folder.is_dir() and any(p.suffix == ".tar" for p in folder.iterdir())


def run(args: argparse.Namespace) -> int:
    workers = args.workers if args.workers is not None else min(8, available_cpus())
    if _is_shards(args.directory):
        spec = args.directory[0] if len(args.directory) == 1 else tuple(args.directory)
        report = scan_shards(spec, workers=workers, progress=not args.no_progress)
        print(report.format(limit=args.limit))
        return 0 if report.usable else 1
    if len(args.directory) > 1:
        raise UserError(f"check-data takes one image folder, got {len(args.directory)} paths")
    report = scan_folder(args.directory[0], workers=workers, progress=not args.no_progress)
    print(report.format(limit=args.limit))
    return 0 if report.usable else 1
