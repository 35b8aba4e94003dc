"""How commands report what they did: warnings as one line each, and the files they wrote."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def report_warnings(command: str, work: Callable[[], T]) -> T:
    """Run ``work``, printing its warnings as one ``openjepa COMMAND: warning: ...`` line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    for warning in caught:
        print(f"openjepa {command}: warning: {warning.message}", file=sys.stderr)
    return result


def report_picture(path: Path, size: tuple[int, int]) -> int:
    """Say which PNG was written (and its size); the exit status of a command that wrote it."""
    print(f"wrote {path} ({size[0]}x{size[1]} pixels)")
    return 0
