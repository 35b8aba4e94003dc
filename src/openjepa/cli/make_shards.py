"""``openjepa make-shards FOLDER OUT``: write a folder of images as tar shards for ``data.dataset=shards``."""

from __future__ import annotations

import argparse

from ..data.shard_writer import DEFAULT_SHARD_SIZE, parse_size, write_shards
from ..errors import DataError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shards",
        help="write a folder of images as tar shards (WebDataset layout) for data.dataset=shards",
        description="Write every image of FOLDER into uncompressed tar shards in OUT: OUT/train-000000.tar, ... "
                    "(and OUT/val-*.tar for a folder with train/ + val/ sub-folders). Each image keeps its bytes; "
                    "class sub-folders become a .cls member per image and OUT/classes.txt. Images are written in "
                    "a shuffled order (fixed seed). Files that cannot be opened as images are left out and listed.",
    )
    parser.add_argument("folder", help="the image folder (class sub-folders optional; train/ + val/ detected)")
    parser.add_argument("out", help="the folder to write the shards to (created if needed)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=int, default=None, metavar="N",
                      help=f"images per shard (default {DEFAULT_SHARD_SIZE:,})")
    size.add_argument("--max-bytes", type=_size, default=None, metavar="SIZE",
                      help="largest shard size instead, e.g. 1G or 500M")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled write order (default 0)")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the folder's sorted order")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--max-bytes ", "", 1)) from exc


def run(args: argparse.Namespace) -> int:
    results = write_shards(args.folder, args.out, shard_size=args.shard_size, max_bytes=args.max_bytes,
                           seed=None if args.no_shuffle else args.seed, overwrite=args.overwrite,
                           progress=not args.no_progress)
    for split in results:
        print(f"[{split.split}] {split.samples:,} images in {len(split.shards)} shard(s), "
              f"{split.bytes / 2**20:,.1f} MiB: {split.pattern}")
        if split.skipped:
            print(f"  {len(split.skipped)} file(s) left out:")
            for bad in split.skipped[:20]:
                print(f"    {bad.path}: {bad.reason}")
            if len(split.skipped) > 20:
                print(f"    ... and {len(split.skipped) - 20} more")
    print(f"Train with: openjepa pretrain data.dataset=shards data.path={args.out}")
    return 0
