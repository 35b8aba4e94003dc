"""Where a run executes (openjepa.train.runtime): the device and precision picked for CPU, MPS and CUDA machines,
CUDA's properties mocked (no GPU here), and the trainer's own GradScaler and torch.compile paths, run on a CPU."""

import csv

import pytest
import torch

from openjepa.checkpoint import load_checkpoint
from openjepa.errors import UserError
from openjepa.train import runtime as runtime_module
from openjepa.train.runtime import Runtime, setup_runtime
from openjepa.train.trainer import Trainer
from test_train import losses, tiny_config


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with two CUDA GPUs of a settable compute capability; global backend flags restored afterwards."""
    gpu = {"capability": (9, 0), "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: gpu["set"].append(torch.device(d)))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: gpu["capability"])
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    # Saved and put back by hand: `torch.backends.cuda.matmul.allow_tf32` is served by the module's __getattr__,
    # which newer pytest versions refuse to monkeypatch (they look the attribute up statically).
    flags = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
             (torch.backends.cudnn, "benchmark")]
    saved = [(module, flag, getattr(module, flag)) for module, flag in flags]
    try:
        yield gpu
    finally:
        for module, flag, value in saved:
            setattr(module, flag, value)


@pytest.mark.parametrize("capability, requested, dtype, scaler", [
    ((9, 0), "auto", torch.bfloat16, False),
    ((8, 0), "auto", torch.bfloat16, False),
    ((7, 0), "auto", torch.float16, True),  # V100: bf16 is emulated, fp16 needs loss scaling
    ((7, 5), "fp32", None, False),
    ((8, 6), "fp16", torch.float16, True),
])
def test_cuda_device_and_precision(fake_cuda, capability, requested, dtype, scaler):
    fake_cuda["capability"] = capability
    rt = setup_runtime("auto", requested)
    assert rt.device == torch.device("cuda", 0) and fake_cuda["set"] == [torch.device("cuda", 0)]
    assert rt.autocast_dtype == dtype and rt.use_grad_scaler == scaler
    assert rt.precision_choice.device == "cuda (Fake GPU 0)"
    assert torch.backends.cudnn.benchmark  # always on for CUDA
    assert torch.backends.cuda.matmul.allow_tf32 == (dtype is None)  # TF32 only for fp32 matmuls


def test_each_torchrun_process_takes_its_local_gpu(fake_cuda, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert setup_runtime("auto", "fp32").device == torch.device("cuda", 1)  # 3 mod 2 GPUs
    assert setup_runtime("cuda", "fp32").device == torch.device("cuda", 1)
    assert setup_runtime("cuda:0", "fp32").device == torch.device("cuda", 0)  # an explicit index wins
    assert setup_runtime("cpu", "fp32").device == torch.device("cpu")


def test_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    rt = setup_runtime("auto", "auto")
    assert rt.device == torch.device("cpu") and rt.autocast_dtype is None and not rt.use_grad_scaler
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        setup_runtime("cuda", "auto")
    with pytest.raises(UserError, match="MPS is not available"):
        setup_runtime("mps", "auto")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime_module._pick_device("auto", 0) == torch.device("mps")
    assert runtime_module._pick_precision("auto", torch.device("mps"), None, None, 0, 1).precision == "fp32"


def test_trainer_runs_and_checkpoints_a_grad_scaler(tmp_path):
    """fp16's loss-scaling path of the trainer, on a CPU: the scaler is built for the device, steps, and its state
    lands in the checkpoint and is restored on resume."""
    rt = Runtime(torch.device("cpu"), None, use_grad_scaler=True)
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(run, "data.batch_size=16", "train.max_steps=3", "optim.grad_clip=1.0"), rt)
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    assert trainer.run().stop_reason == "max_steps"
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert state["scaler"]["scale"] == 2.0**16 and state["scaler"]["_growth_tracker"] == 3
    resumed = Trainer(tiny_config(run, "data.batch_size=16", "train.max_steps=4"), rt, run / "jepa-latest.pth.tar")
    assert resumed.scaler.state_dict()["_growth_tracker"] == 3
    with open(run / "metrics.csv", newline="") as f:
        assert "grad_norm" not in next(csv.reader(f))  # under loss scaling the norm is not logged


def test_trainer_compiles_the_model_when_asked(tmp_path, monkeypatch):
    """train.compile=true: the trainer hands its model to torch.compile (dynamic shapes: context lengths vary),
    trains through the compiled module and saves plain weights. The cheap "eager" backend stands in for Inductor
    (tests/test_step_parity.py's slow test compiles for real)."""
    real_compile, calls = torch.compile, []

    def eager_compile(model, **kwargs):
        calls.append((type(model).__name__, kwargs))
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    extra = ["data.batch_size=16", "train.max_steps=2"]
    rt = Runtime(torch.device("cpu"), None, use_grad_scaler=False)
    compiled = Trainer(tiny_config(tmp_path / "compiled", *extra, "train.compile=true"), rt)
    assert calls == [("IJEPA", {"dynamic": True})] and compiled.net is not compiled.model
    compiled.run()
    eager = Trainer(tiny_config(tmp_path / "eager", *extra), rt)
    assert eager.net is eager.model and len(calls) == 1
    eager.run()
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / "compiled"), losses(tmp_path / "eager")):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4)
    state = load_checkpoint(tmp_path / "compiled" / "jepa-latest.pth.tar")
    assert not any("_orig_mod" in k for k in state["encoder"])
