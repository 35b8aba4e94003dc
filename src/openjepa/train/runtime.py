"""Where a run executes: device, precision and the torch.distributed process group (torchrun's environment)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 and fp32 do not
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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
        return f"{where}, {self.precision}"


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


def _pick_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    if name == "auto":
        # bf16 autocast where the GPU supports it; fp32 on CPU (bf16 matmuls are slower than fp32 on most CPUs).
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    if name == "fp32":
        return None, False
    if name == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 here")
    return torch.float16, True


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Join torchrun's process group when launched by torchrun (gloo on CPU, NCCL on GPU), pick device/precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    dtype, scaler = _pick_precision(precision, dev)
    return Runtime(dev, dtype, scaler, rank, world_size, local_rank)


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


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()
