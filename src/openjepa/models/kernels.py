"""Which CPU kernel runs the linear layers and the attention, per compute dtype.

The fastest choice differs between machines: oneDNN's fp32 matmul is about twice MKL's on an AMD EPYC and slower
than it on an Intel Xeon; PyTorch's CPU flash attention issues one small matmul per block of queries and keys,
cheap in fp32 but dominated by call overhead where bf16 matmuls go through oneDNN. ``openjepa pretrain`` measures
the candidates at start-up (:mod:`openjepa.precision`) and records its pick here with :func:`use_kernels`; the
defaults below are what every other caller gets.

Kernels are named per dtype (``"fp32"``, ``"bf16"``): linear ``"onednn"`` (:mod:`.fast_linear`) or ``"aten"``
(``F.linear``); attention ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"explicit"`` (softmax of
``q k^T`` through two batched matmuls). None of this applies on GPUs, which always use ``F.linear`` and SDPA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

LINEAR_KERNELS = ("onednn", "aten")
ATTENTION_KERNELS = ("sdpa", "explicit")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}

_DEFAULT_LINEAR = {"fp32": "onednn", "bf16": "onednn"}
_DEFAULT_ATTENTION = {"fp32": "sdpa", "bf16": "sdpa"}
_linear: dict[str, str] = dict(_DEFAULT_LINEAR)
_attention: dict[str, str] = dict(_DEFAULT_ATTENTION)


def cpu_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a CPU matmul on a ``dtype`` tensor runs in: the autocast dtype when CPU autocast is on."""
    if dtype.is_floating_point and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return dtype


def linear_kernel(dtype: torch.dtype) -> str | None:
    """``"onednn"`` or ``"aten"`` for a compute dtype; None for dtypes without a choice (always ``F.linear``)."""
    name = DTYPE_NAMES.get(dtype)
    return _linear[name] if name else None


def attention_kernel(dtype: torch.dtype) -> str:
    """``"sdpa"`` or ``"explicit"`` for a compute dtype (``"sdpa"`` for dtypes without a choice)."""
    name = DTYPE_NAMES.get(dtype)
    return _attention[name] if name else "sdpa"


def use_kernels(linear: Mapping[str, str] | None = None, attention: Mapping[str, str] | None = None) -> None:
    """Set the kernels of some dtypes, e.g. ``use_kernels(linear={"fp32": "aten"})``; others keep theirs."""
    for given, table, valid in ((linear, _linear, LINEAR_KERNELS), (attention, _attention, ATTENTION_KERNELS)):
        for dtype_name, kernel in (given or {}).items():
            if dtype_name not in table or kernel not in valid:
                raise ValueError(f"no kernel {kernel!r} for {dtype_name!r}: dtypes {sorted(table)}, kernels {valid}")
            table[dtype_name] = kernel


@contextlib.contextmanager
def using_kernels(linear: Mapping[str, str] | None = None,
                  attention: Mapping[str, str] | None = None) -> Iterator[None]:
    """:func:`use_kernels` for the duration of a ``with`` block."""
    before = current_kernels()
    use_kernels(linear, attention)
    try:
        yield
    finally:
        use_kernels(**before)


def current_kernels() -> dict[str, dict[str, str]]:
    """The kernels in use, ``{"linear": {...}, "attention": {...}}`` (for run headers and benchmark reports)."""
    return {"linear": dict(_linear), "attention": dict(_attention)}


def reset_kernels() -> None:
    """Back to the defaults (oneDNN linear layers, SDPA attention)."""
    _linear.update(_DEFAULT_LINEAR)
    _attention.update(_DEFAULT_ATTENTION)
