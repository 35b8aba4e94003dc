"""``openjepa``: the command-line entry point. Each subcommand lives in its own module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from .. import __version__
from ..errors import user_error_types

# Modules of openjepa.cli that each register one subcommand through add_parser(subparsers).
COMMANDS = ("pretrain", "check_data", "viz", "export", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openjepa",
        description="I-JEPA self-supervised pretraining, evaluation and export for Vision Transformers.",
    )
    parser.add_argument("--version", action="version", version=f"openjepa {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(subparsers)
    for sub in subparsers.choices.values():  # --debug is accepted after the subcommand too
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("openjepa: interrupted", file=sys.stderr)
        return 130
    except user_error_types() as exc:
        if debug:
            traceback.print_exc()
        print(f"openjepa {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
