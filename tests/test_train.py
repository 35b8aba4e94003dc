"""The trainer end to end on the embedded digits data with a tiny model: outputs, exact resume, DDP parity."""

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openjepa.checkpoint import load_checkpoint, strip_prefix
from openjepa.config import load_config
from openjepa.errors import UserError
from openjepa.train import pretrain

TINY = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.pred_depth=1", "model.pred_emb_dim=16",
    "mask.min_keep=4", "data.max_samples=128", "optim.epochs=2", "optim.warmup_epochs=1",
    "eval.online_every=0", "eval.final_probe=false", "train.threads=1",
]


def tiny_config(out_dir, *extra):
    return load_config("digits", TINY + [f"train.out_dir={out_dir}", *extra])


def losses(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def weights(run_dir):
    state = load_checkpoint(Path(run_dir) / "jepa-latest.pth.tar")
    return {k: strip_prefix(state[k]) for k in ("encoder", "predictor", "target_encoder")}


def test_run_writes_its_outputs(tmp_path):
    result = pretrain(tiny_config(tmp_path / "run", "data.batch_size=16"))
    assert result.stop_reason == "completed" and result.position.global_step == 16
    run = tmp_path / "run"
    for name in ["config.yaml", "metrics.csv", "jepa-latest.pth.tar", "curves.png"]:
        assert (run / name).exists(), name
    steps = losses(run)
    assert [s for s, _ in steps] == list(range(1, 17))
    assert steps[-1][1] < steps[0][1]
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert state["epoch"] == 2 and state["step"] == 16 and state["world_size"] == 1
    assert all(k.startswith("module.") for k in state["encoder"])  # the released layout
    assert set(state) >= {"encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss",
                          "batch_size", "world_size", "lr", "config", "rng", "precision"}
    # what train.precision=auto resolved to (fp32 here: tests/conftest.py fixes it), in the checkpoint and config
    assert state["precision"]["requested"] == "auto" and state["precision"]["resolved"] == "fp32"
    assert (run / "config.yaml").read_text().startswith("# train.precision=auto resolved to fp32 here (cpu, fp32")


def test_refuses_to_mix_runs_without_resume_or_overwrite(tmp_path):
    pretrain(tiny_config(tmp_path / "run", "train.max_steps=1", "data.batch_size=16"))
    with pytest.raises(UserError, match="already holds a run"):
        pretrain(tiny_config(tmp_path / "run", "data.batch_size=16"))
    assert pretrain(tiny_config(tmp_path / "run", "train.max_steps=1", "data.batch_size=16"),
                    overwrite=True).stop_reason == "max_steps"


@pytest.mark.parametrize("stop_at", [5, 8])  # mid-epoch, and exactly at an epoch boundary
def test_resume_continues_exactly(tmp_path, stop_at):
    extra = ["data.batch_size=16", "model.drop_path_rate=0.1"]  # drop-path exercises the saved RNG state
    full = tmp_path / "full"
    pretrain(tiny_config(full, *extra))
    part = tmp_path / "part"
    stopped = pretrain(tiny_config(part, *extra, f"train.max_steps={stop_at}"))
    assert stopped.stop_reason == "max_steps" and stopped.position.global_step == stop_at
    assert (part / "curves.png").exists()  # drawn at every checkpoint, stops included
    resumed = pretrain(tiny_config(part, *extra), resume=part / "jepa-latest.pth.tar")
    assert resumed.position.global_step == 16
    assert losses(part) == losses(full)  # identical floats, step by step
    a, b = weights(full), weights(part)
    for section in a:
        for key in a[section]:
            assert torch.equal(a[section][key], b[section][key]), (section, key)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(out_dir, *extra, resume=None):
    """``openjepa pretrain`` of the tiny digits run in 2 gloo processes, started with the environment torchrun
    gives its workers (without torchrun's own agent process: one interpreter less to start on a small machine)."""
    args = [sys.executable, "-m", "openjepa", "pretrain", *TINY, f"train.out_dir={out_dir}", *extra,
            *([f"--resume={resume}"] if resume else [])]
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return outputs[0][0]  # process 0's stdout


def test_two_processes_with_drop_path_resume_exactly(tmp_path):
    """Drop-path noise is seeded per step and process: a 2-process run resumed from its step-8 checkpoint ends with
    the weights of the uninterrupted run (with the generator state of process 0 restored on both, they differed by
    up to 5e-4). The step-8 checkpoint is the one the uninterrupted run keeps at the end of epoch 1: a run stopped
    there leaves the same state (test_robustness_crash checks that a stop's checkpoint is the uninterrupted run's)."""
    extra = ["data.batch_size=8", "model.drop_path_rate=0.2", "train.keep_every=1"]
    full = tmp_path / "full"
    run_two_processes(full, *extra)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "jepa-ep1.pth.tar", part / "jepa-latest.pth.tar")
    assert load_checkpoint(part / "jepa-latest.pth.tar")["step"] == 8
    out = run_two_processes(part, *extra, resume=part / "jepa-latest.pth.tar")
    assert "resuming at step 8" in out
    a, b = weights(full), weights(part)
    for section in a:
        for key in a[section]:
            assert torch.equal(a[section][key], b[section][key]), (section, key)
    assert [x for x in losses(part)] == [x for x in losses(full) if x[0] > 8]


def test_one_host_sync_per_step_and_the_gradient_norm_in_metrics(tmp_path, monkeypatch):
    """Each optimizer step reads the device once (loss, gradient norm and the stop flags together), also when it
    accumulates micro-batches; nothing inside the step converts a tensor to a Python number otherwise. With
    optim.grad_clip the norm lands in metrics.csv."""
    from openjepa.train import trainer as trainer_module

    exchanges, stray, inside = [], [], [False]
    real_exchange, real_step = trainer_module.exchange, trainer_module.accumulated_step

    def counted_exchange(values, flags, runtime):
        if inside[0]:  # a step's sync (the run's end has one more, outside any step: waiting for its checkpoint)
            exchanges.append(len(values))
        inside[0] = False  # the sync itself may read the device
        try:
            return real_exchange(values, flags, runtime)
        finally:
            inside[0] = True

    def watched_step(*args, **kwargs):
        inside[0] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            inside[0] = False

    for name in ("item", "tolist", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            if inside[0]:
                stray.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    monkeypatch.setattr(trainer_module, "exchange", counted_exchange)
    monkeypatch.setattr(trainer_module, "accumulated_step", watched_step)
    run = tmp_path / "run"
    pretrain(tiny_config(run, "data.batch_size=8", "optim.accum_steps=2", "train.max_steps=5", "optim.grad_clip=1.0"))
    assert exchanges == [2] * 5 and stray == []
    with open(run / "metrics.csv", newline="") as f:
        norms = [float(r["grad_norm"]) for r in csv.DictReader(f)]
    assert len(norms) == 5 and all(0 < n < float("inf") for n in norms)
    pretrain(tiny_config(tmp_path / "plain", "data.batch_size=16", "train.max_steps=1"))
    with open(tmp_path / "plain" / "metrics.csv", newline="") as f:
        assert "grad_norm" not in next(csv.reader(f))  # no clipping: no norm computed, none logged
