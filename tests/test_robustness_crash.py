"""Crash safety: SIGKILL at any moment (even mid-checkpoint) loses nothing but the steps since the last
checkpoint; SIGTERM/SIGINT save a checkpoint and exit; a full disk keeps the previous checkpoint.

The children are real ``openjepa pretrain`` processes on the embedded digits data with a tiny model and 3-step
epochs, so that checkpoints are written every few steps. Kills are triggered by what the child prints or writes
(plus seeded random delays), never by wall-clock guesses alone, so a slow or busy machine only changes where the
random kills land, not whether the assertions hold.
"""

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from crash_harness import PAUSED, Child, child_env, wait_for_rows
from test_train import TINY, losses, tiny_config, weights

from openjepa.checkpoint import CheckpointError, load_checkpoint
from openjepa.checkpoint_writer import CheckpointWriter
from openjepa.cli.main import main as cli_main
from openjepa.train import pretrain

# 48 images in batches of 16: 3 steps per epoch, a checkpoint at the end of each of the 8 epochs (24 steps).
CRASH = TINY + ["data.max_samples=48", "data.batch_size=16", "optim.epochs=8", "train.checkpoint_every=1",
                "model.drop_path_rate=0.1"]  # drop-path: the resumed random stream matters too
HEADER = "openjepa pretrain:"
STEPS = 24


def cli_args(run_dir: Path, *extra: str) -> list[str]:
    return ["pretrain", *CRASH, f"train.out_dir={run_dir}", *extra]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for section in wa:
        assert wa[section].keys() == wb[section].keys()
        for key in wa[section]:
            assert torch.equal(wa[section][key], wb[section][key]), (section, key)


def stray_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process: the same seed, threads and CPU kernels as the children)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = pretrain(tiny_config(run, *CRASH[len(TINY):]))
    assert result.stop_reason == "completed" and result.position.global_step == STEPS
    return run


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(reference, tmp_path):
    run = tmp_path / "run"
    logs = iter(tmp_path / f"child{i}.log" for i in range(20))

    # 1. Killed halfway through writing the second checkpoint (end of epoch 2): the first one must survive.
    child = Child(cli_args(run), next(logs), pause="mid-write", at=2)
    child.wait_for(PAUSED)
    child.kill(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    assert len(stray_files(run)) == 1  # the half-written temporary file
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 3

    # 2. Resumed, then killed with the next checkpoint complete on disk but not yet renamed into place.
    child = Child(cli_args(run, f"--resume={run}"), next(logs), pause="before-rename", at=1)
    child.wait_for(PAUSED)
    child.kill(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    assert any("removed 1 unfinished checkpoint file" in line for line in child.lines), child.output()
    assert len(stray_files(run)) == 1  # the first one was cleaned up; this is the new one
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 3

    # 3. Killed at seeded random moments once training is under way (during steps, saves, or log writes).
    rng = random.Random(1234)
    for _ in range(2):
        child = Child(cli_args(run, f"--resume={run}"), next(logs))
        child.wait_for(HEADER)
        before = load_checkpoint(run / "jepa-latest.pth.tar")["step"]
        if before == STEPS:
            break
        time.sleep(rng.uniform(0.0, 0.6))
        child.kill(signal.SIGKILL)
        assert child.finish() in (0, -signal.SIGKILL), child.output()  # 0: it won the race and finished
        state = load_checkpoint(run / "jepa-latest.pth.tar")  # always a valid checkpoint, never behind
        assert state["step"] >= before and state["step"] % 3 == 0

    # 4. Resumed once more: runs to the end.
    child = Child(cli_args(run, f"--resume={run}"), next(logs))
    assert child.finish() == 0, child.output()
    assert stray_files(run) == []
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == STEPS
    assert_same_weights(reference, run)
    assert losses(run) == losses(reference)  # the log reads as if nothing had happened


# -- SIGTERM / SIGINT ---------------------------------------------------------------------------------------------
LONG = ["optim.epochs=100"]  # 300 steps: the signal always arrives long before the end


def stopped_step(lines: list[str], run: Path) -> int:
    """The step of the CLI's ``stopped at step N; checkpoint saved ...`` line (checked for its advice too)."""
    stopped = next(line for line in lines if line.startswith("stopped at step"))
    assert f"Resume with: openjepa pretrain --resume {run}" in stopped
    return int(stopped.split()[3].rstrip(";"))


def test_sigterm_saves_a_checkpoint_of_the_exact_step(tmp_path):
    run = tmp_path / "run"
    child = Child(cli_args(run, *LONG), tmp_path / "child.log")
    wait_for_rows(run / "metrics.csv", 2, child)
    child.kill(signal.SIGTERM)
    assert child.finish() == 128 + signal.SIGTERM, child.output()
    assert any("SIGTERM received: finishing this step and saving a checkpoint" in line for line in child.lines)
    step = stopped_step(child.lines, run)
    assert 2 <= step < 300 and load_checkpoint(run / "jepa-latest.pth.tar")["step"] == step
    assert [s for s, _ in losses(run)] == list(range(1, step + 1))
    same = tmp_path / "same"  # the checkpoint is exactly the uninterrupted run's state at that step
    pretrain(tiny_config(same, *CRASH[len(TINY):], *LONG, f"train.max_steps={step}"))
    assert_same_weights(same, run)


def test_ctrl_c_saves_a_checkpoint(tmp_path, capsys, monkeypatch):
    """SIGINT, sent to this very process once training is under way (the handler runs in the main thread). The
    epoch-end saves snapshot the weights (training goes on); the stop's save writes them as they are (no second
    copy in host memory) in a thread that does not hold up the exit."""
    saves = []
    real_save = CheckpointWriter.save

    def recorded(self, state, path, copies=(), copy_cpu=True, daemon=False):
        saves.append((state["step"], copy_cpu, daemon))
        return real_save(self, state, path, copies, copy_cpu, daemon)

    monkeypatch.setattr(CheckpointWriter, "save", recorded)
    run = tmp_path / "run"
    done = threading.Event()

    def interrupt_once_training():
        while not done.is_set():
            metrics = run / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) > 2:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt_once_training, daemon=True)
    watcher.start()
    try:
        rc = cli_main(cli_args(run, *LONG))
    finally:
        done.set()
        watcher.join()
    out = capsys.readouterr().out
    assert rc == 128 + signal.SIGINT
    assert "SIGINT received: finishing this step and saving a checkpoint" in out
    step = stopped_step(out.splitlines(), run)
    assert 2 <= step < 300 and load_checkpoint(run / "jepa-latest.pth.tar")["step"] == step
    assert saves[-1] == (step, False, True)
    assert saves[:-1] == [(s, True, False) for s in range(3, step, 3)]  # the epoch ends before the stop


def test_sigterm_waits_for_the_checkpoint_no_longer_than_the_grace_period(tmp_path):
    """A stop's checkpoint that cannot be written within train.stop_grace_seconds (here: stuck just before its
    rename) is left behind: the run says so and exits, and jepa-latest.pth.tar still holds the previous one."""
    run = tmp_path / "run"
    assert pretrain(tiny_config(run, *CRASH[len(TINY):], "train.max_steps=3")).position.global_step == 3
    args = cli_args(run, *LONG, "train.max_steps=null", "train.checkpoint_every=1000", "train.stop_grace_seconds=1",
                    f"--resume={run}")
    child = Child(args, tmp_path / "child.log", pause="before-rename", at=1)
    wait_for_rows(run / "metrics.csv", 5, child)
    child.kill(signal.SIGTERM)
    child.wait_for(PAUSED)
    started = time.monotonic()
    assert child.finish() == 128 + signal.SIGTERM, child.output()
    assert time.monotonic() - started < 30  # the stuck writer did not keep the process alive
    late = next(line for line in child.lines if "was not complete" in line)
    assert "1 s after the stop request (train.stop_grace_seconds); exiting without it" in late
    assert f"{run / 'jepa-latest.pth.tar'} still holds step 3" in late
    stopped = next(line for line in child.lines if line.startswith("stopped at step"))
    assert stopped.endswith(f"without its checkpoint; `openjepa pretrain --resume {run}` continues from step 3")
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 3
    assert len(stray_files(run)) == 1  # the complete, never renamed file: the next start removes it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_stops_both_ranks_of_a_ddp_run_with_one_checkpoint(tmp_path):
    run = tmp_path / "run"
    port = str(_free_port())
    children = []
    for rank in range(2):
        env = {**child_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        args = cli_args(run, *LONG, "data.batch_size=8")
        children.append(Child(args, tmp_path / f"rank{rank}.log", env=env))
    wait_for_rows(run / "metrics.csv", 2, children[0])
    for child in children:  # what SLURM does at the time limit: every task gets SIGTERM
        child.kill(signal.SIGTERM)
    codes = [child.finish() for child in children]
    assert codes == [128 + signal.SIGTERM] * 2, "\n\n".join(c.output() for c in children)
    for child in children:
        assert sum("SIGTERM received" in line for line in child.lines) == 1
    step, other = (stopped_step(child.lines, run) for child in children)
    assert step == other  # both ranks stopped after the same step
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert state["step"] == step and state["world_size"] == 2
    assert sorted(p.name for p in run.glob("*.pth.tar")) == ["jepa-latest.pth.tar"]
    assert stray_files(run) == []


def test_processes_that_would_start_from_different_steps_refuse_to_train(tmp_path):
    """What a train.out_dir that only some nodes see does under --auto-resume: one process finds the checkpoint,
    another none. Both stop before training, saying why, instead of training apart."""
    run = tmp_path / "run"
    pretrain(tiny_config(run, *CRASH[len(TINY):], "train.max_steps=3"))
    port = str(_free_port())
    children = []
    for rank, args in enumerate([cli_args(run, "data.batch_size=8", "--auto-resume"),
                                 cli_args(tmp_path / "elsewhere", "data.batch_size=8", "--auto-resume")]):
        env = {**child_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        children.append(Child(args, tmp_path / f"rank{rank}.log", env=env))
    assert [child.finish() for child in children] == [1, 1], "\n\n".join(c.output() for c in children)
    for child, where in zip(children, (f"step 3 from {run / 'jepa-latest.pth.tar'}", "a new run")):
        message = child.output()
        assert f"the processes of this run resumed from different steps (this one: {where}): train.out_dir" in message
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 3


# -- full disk ------------------------------------------------------------------------------------------------------
class FillingFile:
    """A checkpoint file on a disk that fills up after ``room`` bytes: later writes fail with ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def disk_fills_at_save(monkeypatch):
    """From the ``n``-th checkpoint write on (``arm(n)``), the disk is full half-way through the file."""
    real_fdopen = os.fdopen
    saves = {"count": 0, "from": None}

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if mode != "wb":
            return f
        saves["count"] += 1
        if saves["from"] is None or saves["count"] < saves["from"]:
            return f
        return FillingFile(f, room=30_000)  # a tiny checkpoint is ~250 kB

    monkeypatch.setattr(os, "fdopen", fdopen)
    return lambda n: saves.update({"from": n})


def test_full_disk_keeps_the_previous_checkpoint_and_stops_clearly(tmp_path, capsys, disk_fills_at_save,
                                                                   monkeypatch):
    """The write fails in the background thread; the next step (every process learns of it in the step's sync)
    stops the run with the write's error, explained, and the previous checkpoint in place."""
    real_save = CheckpointWriter.save

    def save_then_let_it_finish(self, *args, **kwargs):  # the failure is known before the next step, always
        timing = real_save(self, *args, **kwargs)
        self._thread.join()
        return timing

    monkeypatch.setattr(CheckpointWriter, "save", save_then_let_it_finish)
    run = tmp_path / "run"
    disk_fills_at_save(3)  # epochs 1 and 2 are saved; the disk is full when epoch 3 ends (step 9)
    rc = cli_main(cli_args(run))
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("openjepa pretrain: error: could not write checkpoint")
    assert "No space left on device" in message
    assert f"the previous checkpoint at {run / 'jepa-latest.pth.tar'} is intact (the checkpoint of step 9)" in message
    assert "Training stopped at step 10 instead of going on" in message  # the step after the failed save
    assert f"`openjepa pretrain --resume {run}` continues from step 6" in message
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 6
    assert stray_files(run) == []  # the partial file was removed, not left to fill the disk further


def test_the_simulated_full_disk_fails_the_way_a_real_one_does(tmp_path):
    """torch.save turns a failed write inside its zip writer into a RuntimeError ("unexpected pos"), as on a
    real full filesystem; save_checkpoint must still see the ENOSPC behind it."""
    from openjepa.checkpoint import save_checkpoint

    with open(tmp_path / "raw", "wb") as f, pytest.raises(RuntimeError) as caught:
        torch.save({"w": torch.zeros(100_000)}, FillingFile(f, room=30_000))
    assert isinstance(caught.value.__context__, OSError) and caught.value.__context__.errno == errno.ENOSPC
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fdopen", lambda fd, mode="r": FillingFile(open(fd, mode), room=30_000))
        with pytest.raises(CheckpointError, match="No space left on device; no checkpoint was written"):
            save_checkpoint({"w": torch.zeros(100_000)}, tmp_path / "new.pth.tar")
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]


def test_sigterm_to_every_process_of_a_run_with_loader_workers(tmp_path):
    """SLURM and Ctrl-C signal the whole process group, DataLoader workers included. The workers must not die
    of it (their death would crash the main process before it saves): the main process saves and exits."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    run = tmp_path / "run"
    args = ["pretrain", *TINY, "data.dataset=folder", f"data.path={images}", "data.batch_size=4",
            "data.num_workers=2", "optim.epochs=100", f"train.out_dir={run}"]
    child = Child(args, tmp_path / "child.log", new_session=True)
    wait_for_rows(run / "metrics.csv", 2, child)
    os.killpg(child.proc.pid, signal.SIGTERM)
    assert child.finish() == 128 + signal.SIGTERM, child.output()
    assert sum("SIGTERM received" in line for line in child.lines) == 1  # not once more per worker
    step = stopped_step(child.lines, run)
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == step


def test_resuming_a_run_at_its_step_limit_takes_no_step(tmp_path):
    run = tmp_path / "run"
    assert pretrain(tiny_config(run, *CRASH[len(TINY):], "train.max_steps=4")).position.global_step == 4
    saved = (run / "jepa-latest.pth.tar").read_bytes()
    again = pretrain(tiny_config(run, *CRASH[len(TINY):], "train.max_steps=4"), resume=run / "jepa-latest.pth.tar")
    assert again.stop_reason == "max_steps" and again.position.global_step == 4
    assert (run / "jepa-latest.pth.tar").read_bytes() == saved
    assert [s for s, _ in losses(run)] == [1, 2, 3, 4]


def test_shielded_workers_still_let_the_interpreter_exit(tmp_path):
    """multiprocessing terminates (SIGTERM) and joins the workers still alive at exit: a worker shielded from
    SIGTERM must then die of it, or the exit would wait forever (e.g. a notebook keeping a trainer alive)."""
    script = ("from torch.utils.data import DataLoader\n"
              "from openjepa.train.signals import shield_workers\n"
              "loader = DataLoader(list(range(8)), num_workers=2, persistent_workers=True)\n"
              "shield_workers(loader)\n"
              "next(iter(loader))\n"
              "print('exiting with live workers', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert proc.returncode == 0 and "exiting with live workers" in proc.stdout, proc.stderr
