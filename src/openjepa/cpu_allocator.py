"""Keep freed memory in the process on CPU, so that training steps stop paying for page faults.

glibc's ``malloc`` serves large blocks (above a threshold of at most 32 MiB) with fresh ``mmap`` calls and
returns them to the system on ``free``; it also hands the top of its heap back once enough of it is free. A
training step allocates and frees gigabytes of activations, so every step faults the same memory in again, page by
page: on the 2-core benchmark machine a ViT-S/16 step took ~290k page faults and ~0.7 s of system time.
:func:`keep_freed_memory` tells ``malloc`` to serve everything from its heap and never shrink it, so the memory
of one step is reused by the next (~15% faster steps there). The price: the process keeps its peak footprint
until it exits, which is what a training process does anyway.

This changes the allocator of the whole process, so the library never does it on import; the trainer calls it for
CPU runs and the benchmarks call it for both implementations they compare. Only glibc (Linux) has these knobs;
elsewhere the call does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_TOP_PAD_BYTES = 256 << 20  # grow the heap in large steps: fewer brk calls while a step warms up
_TRIM_NEVER = -1  # documented in mallopt(3): disables trimming completely

_applied = False


def keep_freed_memory() -> bool:
    """Serve all allocations from the heap and never return it to the system (glibc only).

    Returns whether the setting is in effect (also when an earlier call applied it).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0),
        (_M_TRIM_THRESHOLD, _TRIM_NEVER),
        (_M_TOP_PAD, _TOP_PAD_BYTES),
    ))
    _applied = ok
    return ok
