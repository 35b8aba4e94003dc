"""The training precision, decided from what the machine measures (CPU) or reports (GPU).

* **CPU**: bf16 autocast only where the model's linear layers (forward + backward, at its own shapes) run clearly
  faster in bf16 than in fp32 (:data:`BF16_MIN_SPEEDUP`). CPUs with AMX reach ~6x; without ``avx512_bf16`` bf16
  is emulated and runs at a few thousandths of fp32. The rates come from a short measurement at start-up
  (``openjepa.speed_probe``), cached per machine in ``~/.cache/openjepa/precision.json``.
* **CUDA**: bf16 autocast on GPUs with native bf16 (compute capability >= 8.0), fp16 autocast with a GradScaler
  below that (``torch.cuda.is_bf16_supported()`` also says yes where bf16 is emulated); TF32 for fp32 matmuls and
  ``cudnn.benchmark`` on.
* **MPS**: fp32 unless asked otherwise (openjepa has not measured autocast there).

:func:`decide_precision` is the whole decision as a pure function of the request, the device and the rates.
``OPENJEPA_CPU_PRECISION`` steers the CPU side: ``fp32`` or ``bf16`` make ``auto`` pick that without measuring,
``remeasure`` ignores the cache, ``measure`` (the default) uses it.

This module needs only torch and the standard library.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_MIN_SPEEDUP = 1.3  # below this, bf16's rounding and casts are not worth it
NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere and later
ENV = "OPENJEPA_CPU_PRECISION"
ENV_VALUES = ("measure", "remeasure", "fp32", "bf16")
# Part of every cache key: raised when the measurement changes, so that rates an earlier, wrong measurement stored
# are measured again (2: the bf16 screen no longer counts oneDNN's kernel creation, which ruled bf16 out on AMX).
PROBE_VERSION = 2
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceInfo:
    """What the decision needs to know about a device."""

    type: str  # cpu | cuda | mps
    name: str = ""
    capability: tuple[int, int] | None = None  # CUDA compute capability


@dataclass(frozen=True)
class CpuRates:
    """FLOP/s measured on this CPU at the model's shapes, per dtype (``fp32``/``bf16``) and kernel.

    ``linear``: forward + backward of the model's MLP layers (``onednn`` or ``aten``); ``attention``: forward +
    backward of its attention (``sdpa`` or ``explicit``). ``bf16_screen``: bf16 over fp32 rate of a small matmul,
    set when that alone ruled bf16 out (an emulated bf16 matmul is too slow to time at the model's shapes).
    """

    linear: dict[str, dict[str, float]]
    attention: dict[str, dict[str, float]] = field(default_factory=dict)
    bf16_screen: float | None = None
    source: str = "measured"  # measured | cache

    def best(self, table: str, dtype: str) -> tuple[str, float] | None:
        """The fastest kernel of ``table`` (``linear``/``attention``) for ``dtype`` and its rate."""
        rates = getattr(self, table).get(dtype) or {}
        return max(rates.items(), key=lambda kv: kv[1]) if rates else None

    def bf16_speedup(self) -> float | None:
        """bf16 over fp32 rate of the linear layers (of the small screening matmul if bf16 stopped there)."""
        fp32, bf16 = self.best("linear", "fp32"), self.best("linear", "bf16")
        if fp32 and bf16:
            return bf16[1] / fp32[1]
        return self.bf16_screen

    def kernels(self) -> dict[str, dict[str, str]]:
        """The fastest measured kernel per table and dtype, in ``openjepa.models.kernels.use_kernels`` form."""
        out: dict[str, dict[str, str]] = {"linear": {}, "attention": {}}
        for table in out:
            for dtype in getattr(self, table):
                best = self.best(table, dtype)
                if best:
                    out[table][dtype] = best[0]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "source"}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "cache") -> CpuRates:
        return cls(d["linear"], d.get("attention", {}), d.get("bf16_screen"), source)


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision of a run and why."""

    precision: str  # fp32 | bf16 | fp16
    requested: str
    device: str
    reason: str
    grad_scaler: bool = False
    allow_tf32: bool = False
    cudnn_benchmark: bool = False
    kernels: dict[str, dict[str, str]] | None = None  # CPU kernels to use (None: the defaults)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    def describe(self) -> str:
        """For the run header, e.g. ``cpu, fp32: bf16 matmul 0.002x fp32 here``."""
        return f"{self.device}, {self.reason}"

    def record(self) -> dict[str, Any]:
        """What a run writes into its checkpoints."""
        return {"requested": self.requested, "resolved": self.precision, "reason": self.reason,
                "device": self.device, "kernels": self.kernels}


def _ratio(x: float) -> str:
    return f"{x:.3g}x"


def _cpu_reason(rates: CpuRates | None) -> str:
    speedup = rates.bf16_speedup() if rates is not None else None
    return "" if speedup is None else f"bf16 matmul {_ratio(speedup)} fp32 here"


def decide_precision(
    requested: str, device: DeviceInfo, rates: CpuRates | None = None, forced: str | None = None
) -> PrecisionChoice:
    """The precision of a run: pure, so that every branch is testable.

    Args:
        requested: ``train.precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: the device the run trains on.
        rates: CPU rates measured at the model's shapes (None: not measured).
        forced: ``fp32``/``bf16`` from ``OPENJEPA_CPU_PRECISION``: what ``auto`` picks on a CPU, unmeasured.
    """
    if requested not in PRECISIONS:
        raise UserError(f"train.precision must be one of {PRECISIONS}, got {requested!r}")
    kind = device.type
    if kind == "cuda":
        return _decide_cuda(requested, device)
    if requested == "fp16":
        raise UserError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 here")
    if kind != "cpu":  # mps and others
        if requested == "auto":
            return PrecisionChoice("fp32", requested, kind, "fp32 (openjepa has not measured autocast here)")
        return PrecisionChoice(requested, requested, kind, f"{requested} (requested)")
    kernels = rates.kernels() if rates is not None else None
    measured = _cpu_reason(rates)
    if requested != "auto":
        note = f"; {measured}" if measured and requested == "bf16" else ""
        label = "bf16 autocast" if requested == "bf16" else "fp32"
        return PrecisionChoice(requested, requested, "cpu", f"{label} (requested{note})", kernels=kernels)
    if forced is not None:
        label = "bf16 autocast" if forced == "bf16" else "fp32"
        return PrecisionChoice(forced, requested, "cpu", f"{label} (set by {ENV}={forced})", kernels=kernels)
    speedup = rates.bf16_speedup() if rates is not None else None
    if speedup is None:
        return PrecisionChoice("fp32", requested, "cpu", "fp32 (bf16 not measured)", kernels=kernels)
    if speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice("bf16", requested, "cpu", f"bf16 autocast: {_ratio(speedup)} the fp32 matmul rate here",
                               kernels=kernels)
    return PrecisionChoice("fp32", requested, "cpu", f"fp32: {measured}", kernels=kernels)


def _decide_cuda(requested: str, device: DeviceInfo) -> PrecisionChoice:
    capability = device.capability or (0, 0)
    cc = f"compute capability {capability[0]}.{capability[1]}"
    native = capability >= NATIVE_BF16_CAPABILITY
    where = f"cuda ({device.name})" if device.name else "cuda"

    def choice(precision: str, reason: str) -> PrecisionChoice:
        return PrecisionChoice(precision, requested, where, reason, grad_scaler=precision == "fp16",
                               allow_tf32=precision == "fp32", cudnn_benchmark=True)

    if requested == "auto":
        if native:
            return choice("bf16", f"bf16 autocast: native bf16 ({cc})")
        return choice("fp16", f"fp16 autocast + GradScaler: no native bf16 ({cc})")
    if requested == "fp32":
        return choice("fp32", "fp32 (requested; TF32 matmuls)")
    if requested == "bf16" and not native:
        return choice("bf16", f"bf16 autocast (requested; emulated on {cc}: fp16 or auto would be faster)")
    label = "fp16 autocast + GradScaler" if requested == "fp16" else "bf16 autocast"
    return choice(requested, f"{label} (requested)")


def device_info(device: torch.device) -> DeviceInfo:
    """Type, name and (CUDA) compute capability of a device."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DeviceInfo("cuda", torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)))
    return DeviceInfo(device.type, cpu_model() if device.type == "cpu" else "")


def apply_backend_flags(choice: PrecisionChoice) -> None:
    """TF32 and cuDNN autotuning as the choice says (only CUDA choices turn anything on)."""
    if choice.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if choice.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


# -- the CPU measurement: environment, cache, timing ------------------------------------------------------------
def cpu_setting() -> str:
    """``OPENJEPA_CPU_PRECISION`` (``measure`` when unset), validated."""
    value = os.environ.get(ENV, "measure").strip().lower() or "measure"
    if value not in ENV_VALUES:
        raise UserError(f"{ENV}={value!r}: use one of {', '.join(ENV_VALUES)}")
    return value


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path() -> Path:
    """``$OPENJEPA_CACHE_DIR/precision.json``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    root = os.environ.get("OPENJEPA_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "openjepa")
    return Path(root) / "precision.json"


def cache_key(signature: str, threads: int) -> str:
    """Rates depend on the CPU, the torch build, the thread count and the shapes."""
    return f"probe {PROBE_VERSION} | {cpu_model()} | torch {torch.__version__} | {threads} threads | {signature}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomically (two runs starting together must not leave half a file); a read-only home is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".precision.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def cached_cpu_rates(signature: str, measure: Callable[[], CpuRates], threads: int | None = None,
                     remeasure: bool = False, path: Path | None = None) -> CpuRates:
    """Rates for ``signature`` (the shapes) from the cache, else from ``measure()`` (then stored), with
    ``threads`` intra-op threads (the run's; default: the current count) during the measurement."""
    path = path or cache_path()
    before = torch.get_num_threads()
    threads = threads or before
    key = cache_key(signature, threads)
    cache = _read_cache(path)
    if not remeasure and isinstance(cache.get(key), dict):
        try:
            return CpuRates.from_dict(cache[key])
        except (KeyError, TypeError):
            pass
    torch.set_num_threads(threads)
    try:
        rates = measure()
    finally:
        torch.set_num_threads(before)
    cache = _read_cache(path)  # re-read: another run may have written meanwhile
    cache[key] = {**rates.to_dict(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_cache(path, cache)
    return rates


def best_time(fn: Callable[[], object], min_time: float = 0.03, min_reps: int = 3, max_reps: int = 10,
              give_up_after: float | None = None) -> float:
    """Seconds of ``fn()`` at its best after one untimed call (best, not median: interference only slows).

    If that first call alone takes more than ``give_up_after`` seconds, its time is returned: enough to rule a
    kernel out without spending minutes on it.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if give_up_after is not None and first > give_up_after:
        return first
    best, total, reps = float("inf"), 0.0, 0
    while reps < min_reps or (total < min_time and reps < max_reps):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, total, reps = min(best, elapsed), total + elapsed, reps + 1
    return best
