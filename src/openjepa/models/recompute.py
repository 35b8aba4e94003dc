"""Selective recomputation: keep no LayerNorm or GELU outputs for backward, recompute them there.

In a pre-norm ViT block the outputs of ``norm1``, ``norm2`` and the MLP's GELU are kept for backward only because
the matmul that reads each needs its input for the weight gradient: 6 of the about 17 activation widths a block
stores per token (the GELU output alone is 4). Each is one elementwise pass over a tensor that backward keeps
anyway (the LayerNorm's input, the GELU's input). Inside :func:`dropping_recomputable`, every reference autograd
saves to such an output (or to a view or dtype cast of it) is replaced by a recipe that recomputes it when
backward reads it: about a third less activation memory for one LayerNorm or GELU pass per use in backward. The
recomputed values are bitwise those of the forward pass (same operation on the same inputs), so the gradients do
not change.

Code marks such tensors with :func:`recomputable` right after computing them; outside the context that is a no-op.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch


class _Source:
    """How to compute a marked tensor again: ``fn(*args)``, where an argument may itself be a ``_Source``."""

    __slots__ = ("fn", "args", "stride")

    def __init__(self, fn: Callable[..., torch.Tensor], args: tuple[Any, ...], stride: tuple[int, ...]):
        self.fn, self.args, self.stride = fn, args, stride

    def compute(self) -> torch.Tensor:
        out = self.fn(*(a.compute() if isinstance(a, _Source) else a for a in self.args))
        if out.stride() != self.stride:  # same values, another memory layout: restore the forward's
            out = torch.empty_strided(out.shape, self.stride, dtype=out.dtype, device=out.device).copy_(out)
        return out


class _Dropped:
    """What autograd holds instead of a saved view of a marked tensor."""

    __slots__ = ("source", "size", "stride", "offset")

    def __init__(self, source: _Source, view: torch.Tensor):
        self.source = source
        self.size, self.stride, self.offset = view.size(), view.stride(), view.storage_offset()

    def restore(self) -> torch.Tensor:
        with torch.no_grad():
            return self.source.compute().as_strided(self.size, self.stride, self.offset)


# storage address -> (the marked tensor, its source); set only inside dropping_recomputable
_marked: ContextVar[dict[int, tuple[weakref.ref, _Source]] | None] = ContextVar("openjepa_recomputable", default=None)


def recomputable(out: torch.Tensor, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Mark ``out``, just computed as ``fn(*args)``, as cheap to recompute; returns ``out``.

    ``fn`` must be deterministic and ``args`` must not change before backward (true of the activations and
    weights of one step). Arguments that are themselves marked are recomputed in turn rather than kept.
    """
    if torch.compiler.is_compiling():  # a constant while tracing: no context variable in compiled graphs
        return out
    marked = _marked.get()
    if marked is None or out.storage_offset() != 0 or out.numel() == 0:
        return out
    resolved = tuple(_source_of(a, marked) or a if isinstance(a, torch.Tensor) else a for a in args)
    marked[out.untyped_storage().data_ptr()] = (weakref.ref(out), _Source(fn, resolved, out.stride()))
    return out


def _source_of(t: torch.Tensor, marked: dict[int, tuple[weakref.ref, _Source]]) -> _Source | None:
    """The source of ``t`` if ``t`` is (a view of) a marked tensor that is still alive."""
    if t.numel() == 0:
        return None
    storage = t.untyped_storage()
    entry = marked.get(storage.data_ptr())
    if entry is None:
        return None
    original = entry[0]()
    # Alive and on the same storage: the address cannot have been reused by another allocation meanwhile.
    if original is None or original.untyped_storage().data_ptr() != storage.data_ptr():
        return None
    return entry[1]


@contextlib.contextmanager
def dropping_recomputable(enabled: bool = True) -> Iterator[None]:
    """Within this context, tensors marked :func:`recomputable` are not kept for backward (see the module
    docstring). A no-op when not ``enabled`` or inside ``torch.compile`` (which plans its own recomputation)."""
    if not enabled or torch.compiler.is_compiling():
        yield
        return
    marked: dict[int, tuple[weakref.ref, _Source]] = {}

    def pack(t: torch.Tensor) -> Any:
        source = _source_of(t, marked)
        return t if source is None else _Dropped(source, t)

    def unpack(saved: Any) -> torch.Tensor:
        return saved.restore() if isinstance(saved, _Dropped) else saved

    token = _marked.set(marked)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _marked.reset(token)
