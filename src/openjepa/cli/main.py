"""``openjepa``: the command-line entry point. Each subcommand lives in its own module of this package."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback

from ..errors import user_error_types
from ..version import __version__

# A full disk (or quota) is the one OSError a user meets in normal use: it gets a message, not a traceback.
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))

# Modules of openjepa.cli that each register one subcommand through add_parser(subparsers).
COMMANDS = ("pretrain", "check_data", "make_shards", "viz", "export", "convert", "embed", "eval", "finetune",
            "predict")


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


def parse_args(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The parsed command line, as :func:`main` runs it (argparse's usage error and exit status 2 for a bad one)."""
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `pretrain k=v --resume DIR k2=v2`: argparse fills a positional list once, so overrides that follow an
        # option arrive here; they belong to the same list.
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parse_args(argv, parser)
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
        print(f"openjepa {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        if debug:
            traceback.print_exc()
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"openjepa {args.command}: error: {exc.strerror or 'no space left on device'}{where}. Free some "
              f"space (or raise the quota) or write elsewhere; an interrupted pretraining run continues from its "
              f"last checkpoint with `openjepa pretrain --resume RUN_DIR`", file=sys.stderr)
        return 1


def user_message(exc: BaseException) -> str:
    """The message of a user error; for one raised in a DataLoader worker (which torch re-raises with the
    worker's whole traceback in the message) only the original message, the traceback being noise to a user."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    cls = type(exc)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind("\n" + prefix)
        if at >= 0:
            return text[at + 1 + len(prefix):].strip()
    return text


if __name__ == "__main__":
    sys.exit(main())
