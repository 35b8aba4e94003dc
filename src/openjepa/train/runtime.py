"""Where a run executes: device, precision and the torch.distributed process group (torchrun's environment)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..errors import UserError
from .autoprecision import resolve_precision

if TYPE_CHECKING:
    from ..precision import PrecisionChoice
    from ..speed_probe import ProbeShapes


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 and fp32 do not
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    precision_choice: PrecisionChoice | None = None  # what train.precision resolved to, and why

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def describe(self) -> str:
        where = f"{self.device}" + (f", {self.world_size} processes" if self.distributed else "")
        return f"{where}, {self.precision_choice.reason if self.precision_choice else self.precision}"

    def precision_note(self) -> str | None:
        """The ``config.yaml`` comment that records what ``train.precision`` resolved to on this machine."""
        choice = self.precision_choice
        if choice is None:
            return None
        return f"train.precision={choice.requested} resolved to {choice.precision} here ({choice.describe()})"


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device={name} but no CUDA GPU is visible; use train.device=auto or cpu")
        return torch.device(name) if ":" in name else torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device=mps but MPS is not available on this machine; use train.device=auto or cpu")
    return torch.device(name)


def _pick_precision(name: str, device: torch.device, shapes: ProbeShapes | None, threads: int | None,
                    rank: int, world_size: int) -> PrecisionChoice:
    """bf16 on a CPU where it measures clearly faster, on GPUs with native bf16; see ``openjepa.precision``."""
    def from_rank0(measure):  # one process measures, all decide alike
        box = [measure() if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    share = from_rank0 if device.type == "cpu" and world_size > 1 and dist.is_initialized() else None
    return resolve_precision(name, device, shapes, threads, share)


def setup_runtime(device: str = "auto", precision: str = "auto", shapes: ProbeShapes | None = None,
                  threads: int | None = None) -> Runtime:
    """Join torchrun's process group when launched by torchrun (gloo on CPU, NCCL on GPU), pick device/precision
    (on a CPU, measured at ``shapes`` with ``threads`` threads)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    choice = _pick_precision(precision, dev, shapes, threads, rank, world_size)
    return Runtime(dev, choice.autocast_dtype, choice.grad_scaler, rank, world_size, local_rank, choice)


def shutdown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def exchange(values: torch.Tensor, flags: Sequence[bool], runtime: Runtime) -> tuple[list[float], list[bool]]:
    """``values`` (a 1-D tensor) as their mean over processes and ``flags`` as true on every process if true on
    any, read to the host together: one all-reduce and one host sync, however many values and flags."""
    packed = torch.cat([values.float(), torch.tensor([float(f) for f in flags], device=values.device)])
    if runtime.distributed:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    host = packed.tolist()
    count = len(values)
    return [v / runtime.world_size for v in host[:count]], [f > 0 for f in host[count:]]


def any_process(flag: bool, runtime: Runtime) -> bool:
    """True on every process if ``flag`` is true on any (e.g. a stop request that reached one rank)."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def agree_min(value: int, runtime: Runtime) -> int:
    """The smallest of every process's ``value`` (e.g. the steps that fit before a deadline, which each process
    estimates from its own clock), the same on all."""
    if not runtime.distributed:
        return value
    t = torch.tensor([float(value)], device=runtime.device if runtime.device.type == "cuda" else "cpu",
                     dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def on_process_0(work: Callable[[], object], runtime: Runtime, errors: tuple[type[Exception], ...],
                 elsewhere: str) -> None:
    """Run ``work`` on process 0 (e.g. writing a checkpoint); when it raises one of ``errors``, every process
    raises together: process 0 its error, the others a :class:`UserError` saying ``elsewhere``. Also the barrier
    that keeps the processes in step."""
    error: Exception | None = None
    if runtime.is_main:
        try:
            work()
        except errors as exc:
            error = exc
    if any_process(error is not None, runtime):
        raise error or UserError(elsewhere)


def same_on_every_process(value: int, runtime: Runtime) -> bool:
    """Whether every process holds the same integer ``value`` (e.g. the step it resumed from)."""
    if not runtime.distributed:
        return True
    device = runtime.device if runtime.device.type == "cuda" else "cpu"
    low, high = (torch.tensor([int(value)], dtype=torch.int64, device=device) for _ in range(2))
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()
