"""Loading the CIFAR python batches without executing arbitrary code.

A pickle can call any importable function while loading (``os.system``, ``builtins.exec``...). The CIFAR
batches only need dicts, lists, strings, bytes and numbers (built by pickle opcodes, no function calls) plus
numpy array reconstruction. Every other global a file asks for is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

# (module, name) pairs a CIFAR batch may reference. numpy moved numpy.core to numpy._core in 2.0; pickles name
# either. _codecs.encode is how Python 3 writes bytes in protocol-2 pickles (e.g. re-saved batches).
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class UnsafePickleError(DataError):
    """A pickle asked for a global that a data file has no reason to use."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2: keep str as bytes
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module.removeprefix("numpy.core.")  # avoid numpy 2's deprecation shim
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source} asks to load {module}.{name}, which a CIFAR data file never needs; refusing to "
            f"unpickle it (the file is corrupt, not a CIFAR batch, or malicious)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source} uses pickle persistent ids, which a CIFAR data file never needs")


def load_restricted(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only plain containers and numpy arrays."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated or garbled pickles raise many types
            raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); download it again")
