"""The run-control settings a cluster recipe relies on: --auto-resume, train.max_minutes, train.checkpoint_every /
keep_every / checkpoint_minutes, and optim.ipe_scale."""

import csv

import pytest
from test_train import TINY, losses, tiny_config

from openjepa.checkpoint import load_checkpoint
from openjepa.checkpoint_writer import CheckpointWriter
from openjepa.cli.main import main as cli_main
from openjepa.schedules import Schedules
from openjepa.train import pretrain


@pytest.fixture
def saved_steps(monkeypatch):
    """The step of every checkpoint the trainer starts writing, in order."""
    steps = []
    real_save = CheckpointWriter.save

    def recorded(self, state, *args, **kwargs):
        steps.append(state["step"])
        return real_save(self, state, *args, **kwargs)

    monkeypatch.setattr(CheckpointWriter, "save", recorded)
    return steps


def test_auto_resume_starts_a_run_then_continues_it(tmp_path, capsys):
    """What the SLURM recipe runs on every (re)submission: the same command line starts the run when the folder
    holds no checkpoint, and continues it when it does."""
    run = tmp_path / "run"
    args = ["pretrain", *TINY, "data.batch_size=16", f"train.out_dir={run}", "--auto-resume"]
    assert cli_main([*args, "train.max_steps=3"]) == 0  # the first submission, stopped early (a time limit, say)
    first = capsys.readouterr().out
    assert "resuming" not in first and load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 3
    assert cli_main(args) == 0  # the requeued job
    assert "resuming at step 3" in capsys.readouterr().out
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 16
    assert [s for s, _ in losses(run)] == list(range(1, 17))


def test_max_minutes_stops_cleanly_with_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["pretrain", *TINY, "data.batch_size=16", f"train.out_dir={run}", "train.max_minutes=1e-9"]) == 0
    assert "stopped at step 1 (time limit); checkpoint saved" in capsys.readouterr().out  # checked after each step
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 1
    none = pretrain(tiny_config(tmp_path / "none", "data.batch_size=16", "train.max_minutes=0"))
    assert none.stop_reason == "time_limit" and none.position.global_step == 0


def test_checkpoint_every_keep_every_and_ipe_scale(tmp_path, saved_steps):
    """4 epochs of 4 steps. checkpoint_every=3 and keep_every=2 write at the ends of epochs 2 (kept), 3 and 4 (the
    last, kept); ipe_scale=2 stretches the schedules over 32 steps, so the run ends half-way down the cosine."""
    run = tmp_path / "run"
    cfg = tiny_config(run, "data.max_samples=64", "data.batch_size=16", "optim.epochs=4", "optim.ipe_scale=2",
                      "train.checkpoint_every=3", "train.keep_every=2")
    pretrain(cfg)
    assert saved_steps == [8, 12, 16]
    assert sorted(p.name for p in run.glob("*.pth.tar")) == ["jepa-ep2.pth.tar", "jepa-ep4.pth.tar",
                                                             "jepa-latest.pth.tar"]
    assert load_checkpoint(run / "jepa-ep2.pth.tar")["step"] == 8
    assert (run / "jepa-ep4.pth.tar").read_bytes() == (run / "jepa-latest.pth.tar").read_bytes()
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    o = cfg.optim
    schedules = Schedules(total_steps=32, warmup_steps=4, start_lr=o.start_lr, lr=o.lr, final_lr=o.final_lr,
                          weight_decay=o.weight_decay, final_weight_decay=o.final_weight_decay, ema_start=o.ema[0],
                          ema_end=o.ema[1])
    for row in rows:
        lr, wd, momentum = schedules.at(int(row["step"]) - 1)
        assert float(row["lr"]) == pytest.approx(lr, rel=1e-5) and float(row["wd"]) == pytest.approx(wd, rel=1e-5)
        assert float(row["momentum"]) == pytest.approx(momentum, rel=1e-6)
    assert float(rows[-1]["lr"]) > 0.5 * o.lr and float(rows[-1]["momentum"]) < 0.999  # not at the schedules' end


def test_checkpoint_minutes_saves_within_an_epoch(tmp_path, saved_steps):
    """train.checkpoint_minutes rewrites the latest checkpoint mid-epoch (here after every step); the step that
    ends an epoch leaves it to the epoch's own save."""
    run = tmp_path / "run"
    result = pretrain(tiny_config(run, "data.max_samples=64", "data.batch_size=16", "optim.epochs=1",
                                  "train.checkpoint_minutes=1e-9"))
    assert result.position.global_step == 4 and saved_steps == [1, 2, 3, 4]
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (4, 1, 0)
