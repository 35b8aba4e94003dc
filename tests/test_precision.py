"""The precision decision (openjepa.precision): every row of the table, the cache, and the GPU rules with mocked
device properties. Nothing here is timed."""

import json

import pytest
import torch

from openjepa import precision
from openjepa.errors import UserError
from openjepa.precision import CpuRates, DeviceInfo, cached_cpu_rates, decide_precision

CPU = DeviceInfo("cpu", "Some CPU")


def rates(fp32: float, bf16: float | None = None, screen: float | None = None) -> CpuRates:
    linear = {"fp32": {"onednn": fp32, "aten": fp32 / 2}}
    attention = {"fp32": {"sdpa": 1.0, "explicit": 2.0}}
    if bf16 is not None:
        linear["bf16"] = {"onednn": bf16 / 3, "aten": bf16}
        attention["bf16"] = {"sdpa": 3.0, "explicit": 1.0}
    return CpuRates(linear, attention, screen)


@pytest.mark.parametrize(
    "requested, rates_, forced, expected, reason",
    [
        ("auto", rates(100e9, 480e9), None, "bf16", "bf16 autocast: 4.8x the fp32 matmul rate here"),
        ("auto", rates(100e9, 130e9), None, "bf16", "bf16 autocast: 1.3x the fp32 matmul rate here"),
        ("auto", rates(100e9, 129e9), None, "fp32", "fp32: bf16 matmul 1.29x fp32 here"),
        ("auto", rates(100e9, screen=0.002), None, "fp32", "fp32: bf16 matmul 0.002x fp32 here"),
        ("auto", None, None, "fp32", "fp32 (bf16 not measured)"),
        ("auto", None, "bf16", "bf16", "bf16 autocast (set by OPENJEPA_CPU_PRECISION=bf16)"),
        ("auto", rates(100e9, 480e9), "fp32", "fp32", "fp32 (set by OPENJEPA_CPU_PRECISION=fp32)"),
        ("fp32", rates(100e9, 480e9), None, "fp32", "fp32 (requested)"),
        ("bf16", rates(100e9, screen=0.002), None, "bf16", "bf16 autocast (requested; bf16 matmul 0.002x fp32 here)"),
        ("bf16", None, None, "bf16", "bf16 autocast (requested)"),
    ],
)
def test_cpu_decision(requested, rates_, forced, expected, reason):
    choice = decide_precision(requested, CPU, rates_, forced)
    assert (choice.precision, choice.reason) == (expected, reason)
    assert choice.autocast_dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert not (choice.grad_scaler or choice.allow_tf32 or choice.cudnn_benchmark)
    assert choice.describe() == f"cpu, {reason}"


def test_cpu_choice_carries_the_fastest_kernels():
    choice = decide_precision("auto", CPU, rates(100e9, 480e9))
    assert choice.kernels == {"linear": {"fp32": "onednn", "bf16": "aten"},
                              "attention": {"fp32": "explicit", "bf16": "sdpa"}}
    assert choice.record() == {"requested": "auto", "resolved": "bf16", "device": "cpu", "kernels": choice.kernels,
                               "reason": "bf16 autocast: 4.8x the fp32 matmul rate here"}


@pytest.mark.parametrize(
    "capability, requested, expected, scaler, reason_part",
    [
        ((9, 0), "auto", "bf16", False, "native bf16 (compute capability 9.0)"),
        ((8, 0), "auto", "bf16", False, "native bf16 (compute capability 8.0)"),
        ((7, 5), "auto", "fp16", True, "no native bf16 (compute capability 7.5)"),
        ((7, 0), "auto", "fp16", True, "no native bf16 (compute capability 7.0)"),
        ((6, 1), "auto", "fp16", True, "no native bf16"),
        ((8, 6), "fp32", "fp32", False, "TF32"),
        ((7, 0), "bf16", "bf16", False, "emulated on compute capability 7.0"),
        ((8, 0), "bf16", "bf16", False, "(requested)"),
        ((8, 0), "fp16", "fp16", True, "GradScaler (requested)"),
    ],
)
def test_cuda_decision(capability, requested, expected, scaler, reason_part):
    choice = decide_precision(requested, DeviceInfo("cuda", "GPU", capability))
    assert choice.precision == expected and choice.grad_scaler == scaler
    assert reason_part in choice.reason
    assert choice.allow_tf32 == (expected == "fp32") and choice.cudnn_benchmark
    assert choice.device == "cuda (GPU)" and choice.kernels is None


@pytest.mark.parametrize("requested, expected", [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16")])
def test_mps_decision(requested, expected):
    assert decide_precision(requested, DeviceInfo("mps")).precision == expected


@pytest.mark.parametrize("device", [CPU, DeviceInfo("mps")])
def test_fp16_needs_cuda(device):
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        decide_precision("fp16", device)


def test_unknown_precision_is_refused():
    with pytest.raises(UserError, match="train.precision must be one of"):
        decide_precision("fp8", CPU)


@pytest.fixture
def cuda_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


@pytest.mark.parametrize(
    "name, capability, requested, expected, tf32",
    [
        ("NVIDIA H100", (9, 0), "auto", "bf16", False),
        ("NVIDIA A100", (8, 0), "auto", "bf16", False),
        ("Tesla T4", (7, 5), "auto", "fp16", False),
        ("Tesla V100", (7, 0), "auto", "fp16", False),
        ("Tesla V100", (7, 0), "fp32", "fp32", True),
    ],
)
def test_resolve_on_mocked_gpus(monkeypatch, cuda_flags, name, capability, requested, expected, tf32):
    """The whole path of a run on a GPU, device properties mocked; is_bf16_supported() is not trusted (it says
    yes on a V100, where bf16 is emulated)."""
    from openjepa.train.autoprecision import resolve_precision

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    choice = resolve_precision(requested, torch.device("cuda", 0))
    assert choice.precision == expected and choice.grad_scaler == (expected == "fp16")
    assert choice.device == f"cuda ({name})"
    assert torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.allow_tf32 == tf32 and torch.backends.cudnn.allow_tf32 == tf32


def test_cpu_choice_leaves_cuda_flags_alone(cuda_flags):
    precision.apply_backend_flags(decide_precision("fp32", CPU))
    assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.benchmark)


# -- the cache ---------------------------------------------------------------------------------------------------
def test_rates_are_measured_once_per_machine_and_shape(tmp_path):
    path = tmp_path / "precision.json"
    calls = []

    def measure():
        calls.append(torch.get_num_threads())
        return rates(100e9, 480e9)

    first = cached_cpu_rates("shapes A", measure, threads=1, path=path)
    again = cached_cpu_rates("shapes A", measure, threads=1, path=path)
    assert calls == [1] and first.source == "measured" and again.source == "cache"
    assert again.to_dict() == first.to_dict()
    cached_cpu_rates("shapes B", measure, threads=1, path=path)  # other shapes
    cached_cpu_rates("shapes A", measure, threads=2, path=path)  # another thread count
    cached_cpu_rates("shapes A", measure, threads=1, path=path, remeasure=True)
    assert calls == [1, 1, 2, 1]
    keys = json.loads(path.read_text())
    assert len(keys) == 3 and all(precision.cpu_model() in k and torch.__version__ in k for k in keys)


def test_a_damaged_cache_is_measured_again(tmp_path):
    path = tmp_path / "precision.json"
    path.write_text("{not json")
    got = cached_cpu_rates("s", lambda: rates(1.0, 2.0), threads=1, path=path)
    assert got.source == "measured" and json.loads(path.read_text())


def test_environment_variable(monkeypatch, tmp_path):
    from openjepa.train.autoprecision import measured_rates

    monkeypatch.setenv("OPENJEPA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("OPENJEPA_CPU_PRECISION", "fp32")
    assert measured_rates(None) is None  # fixed by the variable: nothing is measured
    monkeypatch.setenv("OPENJEPA_CPU_PRECISION", "fastest")
    with pytest.raises(UserError, match="OPENJEPA_CPU_PRECISION"):
        precision.cpu_setting()
