"""Checkpoints written in the background, and read back through a memory map.

:class:`CheckpointWriter` takes a snapshot of a training state and writes it in a background thread with
:func:`openjepa.checkpoint.save_checkpoint`: a temporary file in the destination folder, flushed and fsync'ed, then
renamed over the destination. Until the rename the previous checkpoint stays untouched, so a process killed at
any moment (SIGKILL at the end of a grace period, a node failure) leaves either the old or the new checkpoint,
never a torn one. One save runs at a time: :meth:`CheckpointWriter.save` first waits for the previous one, and
:meth:`CheckpointWriter.wait` (call it before exiting) joins the thread; a failed write is raised on the calling
thread by the next ``save``, ``wait`` or ``check``.

**What the snapshot costs.** The file must hold the state as it was when ``save`` was called, while training may
go on changing the weights in place. So ``save`` copies every tensor to host memory before returning: device
tensors always (that copy is what the write needs anyway), CPU tensors unless ``copy_cpu=False``. Views that
share a storage share it in the copy too, so the file is the same as a synchronous ``torch.save`` of the state.
The copy doubles the host memory a CPU state takes -- for a ViT-H/14 training state (context and target
encoders, predictor, AdamW moments: about 2.6 billion fp32 values, 10.4 GB) that is 10.4 GB more, which a 24 GB
machine running the model cannot give. When training has stopped (the SIGTERM path, the end of a run) nothing
changes the tensors any more and ``copy_cpu=False`` writes straight from them: no second copy, the write simply
overlaps whatever the process still does before exiting (writing logs, shutting workers down).

:func:`load_checkpoint_mmap` loads with ``torch.load(mmap=True, weights_only=True)``: tensors are views of the
mapped file, pages are read when touched, and the page cache is shared by every process of a machine, so eight
ranks loading one checkpoint read it from disk once and none holds a private copy of parts it does not use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic_write import fsync_dir
from .checkpoint import CheckpointError, _file_kind, load_checkpoint, save_checkpoint


def snapshot(state: Any, copy_cpu: bool = True, pin_memory: bool = False,
             buffers: dict[tuple, torch.UntypedStorage] | None = None) -> Any:
    """``state`` with every tensor copied to host memory (CPU tensors only when ``copy_cpu``); containers
    (dicts, lists, tuples) are rebuilt, other values kept. Tensors sharing a storage share one copy, at the same
    offsets, so the copy serialises exactly like the original. ``pin_memory`` pins the host copies of device
    tensors (faster, asynchronous device-to-host copies; the caller synchronises).

    ``buffers``: host storages of an earlier snapshot, keyed by the storage they copied; those whose source is
    still the same storage are overwritten instead of allocating (and page-faulting) fresh memory, and the dict is
    updated to this snapshot's storages. Only pass it when nothing reads the earlier snapshot any more."""
    old = buffers if buffers is not None else {}
    copies: dict[tuple, torch.UntypedStorage] = {}
    device_copied = False

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal device_copied
        if tensor.device.type == "cpu" and not copy_cpu:
            return tensor
        if tensor.device.type == "meta":
            raise CheckpointError("cannot save a tensor on the meta device: it has no data")
        storage = tensor.untyped_storage()
        key = (str(storage.device), storage.data_ptr(), storage.nbytes())
        host = copies.get(key) if storage.nbytes() else None
        if host is None:
            host = old.get(key)
            if host is None:
                host = torch.UntypedStorage(storage.nbytes(), device="cpu")
                if pin_memory and storage.device.type != "cpu":
                    host = host.pin_memory()
            host.copy_(storage, non_blocking=pin_memory and host.is_pinned())
            device_copied |= storage.device.type != "cpu"
            if storage.nbytes():
                copies[key] = host
        out = torch.empty(0, dtype=tensor.dtype, device="cpu")
        out.set_(host, tensor.storage_offset(), tensor.size(), tensor.stride())
        return out

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return copy(value)
        if isinstance(value, dict):  # OrderedDict (state dicts) stays OrderedDict: the pickle stays the same
            out = value.copy()
            for k in out:
                out[k] = walk(out[k])
            return out
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, tuple):
            return type(value)(*map(walk, value)) if hasattr(value, "_fields") else tuple(walk(v) for v in value)
        return value

    result = walk(state)
    if device_copied and pin_memory and torch.cuda.is_available():
        torch.cuda.synchronize()
    if buffers is not None:
        buffers.clear()
        buffers.update(copies)
    return result


@dataclass
class SaveTiming:
    """How long the last save took: ``snapshot_s`` blocked the caller, ``write_s`` ran in the background."""

    path: Path
    snapshot_s: float = 0.0
    write_s: float = 0.0


class CheckpointWriter:
    """Writes checkpoints in a background thread, one at a time (see the module docstring).

    ``writer.save(state, path)`` returns once the snapshot is taken; ``writer.wait()`` returns when the file is in
    place (raising :class:`CheckpointError` if writing failed). Use as a context manager to wait on exit.
    """

    def __init__(self, pin_memory: bool | None = None, keep_buffers: bool = False):
        """``pin_memory``: pinned host copies of device tensors (default: when CUDA is available).
        ``keep_buffers``: keep the host copies between saves and overwrite them next time (each save after the
        first then costs a memory copy, not fresh allocations; the host memory stays taken)."""
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._buffers: dict[tuple, torch.UntypedStorage] | None = {} if keep_buffers else None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last: SaveTiming | None = None

    @property
    def busy(self) -> bool:
        """Whether a save is still being written."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """Whether the last save has finished and failed (without waiting; :meth:`check` raises its error)."""
        return not self.busy and self._error is not None

    def save(self, state: Mapping[str, Any], path: str | os.PathLike, copies: Sequence[str | os.PathLike] = (),
             copy_cpu: bool = True, daemon: bool = False) -> SaveTiming:
        """Snapshot ``state`` and write it to ``path`` (then to each of ``copies``, e.g. a kept epoch's file) in
        the background. Waits for the previous save first and raises its error, if any.

        ``copy_cpu=False``: CPU tensors are written from where they are, without a copy; the caller must not
        change them until :meth:`wait` returns (use it once training has stopped). ``daemon=True``: the writing
        thread does not hold up the interpreter's exit; a write still under way then is cut short, which leaves the
        previous file in place and a temporary file beside it (for a process that must be gone by a deadline)."""
        self.wait()
        start = time.perf_counter()
        frozen = snapshot(dict(state), copy_cpu=copy_cpu, pin_memory=self.pin_memory, buffers=self._buffers)
        timing = SaveTiming(Path(path), snapshot_s=time.perf_counter() - start)
        self.last = timing
        self._thread = threading.Thread(target=self._write, args=(frozen, Path(path), [Path(c) for c in copies],
                                                                  timing),
                                        name="openjepa-checkpoint-writer", daemon=daemon)
        self._thread.start()  # not a daemon by default: a normal interpreter exit waits for the file to be complete
        return timing

    def _write(self, state: dict[str, Any], path: Path, copies: list[Path], timing: SaveTiming) -> None:
        start = time.perf_counter()
        try:
            save_checkpoint(state, path)
            for extra in copies:
                copy_atomically(path, extra)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by wait()/check()
            self._error = exc
        finally:
            timing.write_s = time.perf_counter() - start

    def check(self) -> None:
        """Raise the error of a finished, failed save (without waiting for one in progress)."""
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, CheckpointError):
                raise CheckpointError(str(error)) from error
            raise CheckpointError(f"writing the checkpoint failed in the background: {type(error).__name__}: "
                                  f"{error}") from error

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the save in progress is written (at most ``timeout`` seconds); raise its error. Returns
        False when the timeout ran out first (the save goes on)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        self.check()
        return True

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.wait()
        elif self._thread is not None:
            self._thread.join()  # finish the file, but do not hide the error already on its way


def copy_atomically(source: Path, target: Path) -> Path:
    """Copy a finished checkpoint to ``target`` through a temporary file and a rename (``target`` is never torn)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write checkpoint {target}: {exc.strerror or exc}") from exc
        raise
    fsync_dir(target.parent)
    return target


def load_checkpoint_mmap(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`openjepa.checkpoint.load_checkpoint` through a memory map: tensors are CPU views of the file, read
    when touched. Files ``torch.load`` cannot map (the legacy non-zip format, safetensors) are loaded normally."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0 or _file_kind(path) != "zip":
        return load_checkpoint(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the normal loader explains what is wrong with the file
        return load_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of state dicts")
    return state
