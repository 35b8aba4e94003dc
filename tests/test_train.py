"""The trainer end to end on the embedded digits data with a tiny model: outputs, exact resume, DDP parity."""

import csv
import os
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


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one = tmp_path / "one"
    pretrain(tiny_config(one, "data.batch_size=16"))
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "openjepa", "pretrain", *TINY,
           f"train.out_dir={two}", "data.batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    l1, l2 = losses(one), losses(two)
    assert [s for s, _ in l1] == [s for s, _ in l2]
    for (_, x), (_, y) in zip(l1, l2):
        assert abs(x - y) < 1e-5 * max(1.0, abs(x))
    a, b = weights(one), weights(two)
    for section in a:
        for key in a[section]:
            assert torch.allclose(a[section][key], b[section][key], atol=1e-5), (section, key)
    assert load_checkpoint(two / "jepa-latest.pth.tar")["world_size"] == 2


def test_one_host_sync_per_step_and_the_gradient_norm_in_metrics(tmp_path, monkeypatch):
    """Each step reads the device once (loss, gradient norm and the stop flags together); nothing inside the
    step converts a tensor to a Python number otherwise. With optim.grad_clip the norm lands in metrics.csv."""
    from openjepa.train import trainer as trainer_module

    exchanges, stray, inside = [], [], [False]
    real_exchange, real_step = trainer_module.exchange, trainer_module.train_step

    def counted_exchange(values, flags, runtime):
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
    monkeypatch.setattr(trainer_module, "train_step", watched_step)
    run = tmp_path / "run"
    pretrain(tiny_config(run, "data.batch_size=16", "train.max_steps=5", "optim.grad_clip=1.0"))
    assert exchanges == [2] * 5 and stray == []
    with open(run / "metrics.csv", newline="") as f:
        norms = [float(r["grad_norm"]) for r in csv.DictReader(f)]
    assert len(norms) == 5 and all(0 < n < float("inf") for n in norms)
    pretrain(tiny_config(tmp_path / "plain", "data.batch_size=16", "train.max_steps=1"))
    with open(tmp_path / "plain" / "metrics.csv", newline="") as f:
        assert "grad_norm" not in next(csv.reader(f))  # no clipping: no norm computed, none logged
