"""``openjepa check-data DIR``: scan a folder of images before training and report what the loader will see."""

from __future__ import annotations

import argparse

from ..data.loader import available_cpus
from ..data.scan import scan_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-data",
        help="scan a folder of images: counts per class, odd formats, unreadable files",
        description="Decode every image of a folder dataset exactly as training does and report the number of "
                    "images, the classes and their counts, files in odd modes that will be converted, and "
                    "unreadable files with the reason (training skips those). Exit status 0 when the folder is "
                    "usable for training, 1 when it holds no readable image.",
    )
    parser.add_argument("directory", help="the folder (class sub-folders optional; train/ + val/ splits detected)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: the available CPUs, at most 8; 0: this process)")
    parser.add_argument("--limit", type=int, default=20, help="unreadable files listed per split (default 20)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    workers = args.workers if args.workers is not None else min(8, available_cpus())
    report = scan_folder(args.directory, workers=workers, progress=not args.no_progress)
    print(report.format(limit=args.limit))
    return 0 if report.usable else 1
