"""Background checkpoint writes: same file as a synchronous save, atomic under crashes, errors raised on the
caller's thread; memory-mapped loading."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pytest
import torch

import openjepa.checkpoint as checkpoint_module
from openjepa.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from openjepa.checkpoint_writer import CheckpointWriter, load_checkpoint_mmap, snapshot


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(64, 32, generator=g)
    return {
        "encoder": OrderedDict([("w", weight), ("w_t", weight.t()), ("row", weight[3]), ("b", torch.zeros(32))]),
        "opt": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(64, 32, generator=g)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "epoch": 3, "config": {"name": "x", "sizes": [1, 2]}, "half": torch.randn(7, generator=g).half(),
    }


def test_background_file_equals_a_synchronous_save_despite_later_changes(tmp_path):
    state = _state()
    save_checkpoint(state, tmp_path / "sync.pth")
    with CheckpointWriter() as writer:
        writer.save(state, tmp_path / "bg.pth", copies=[tmp_path / "kept.pth"])
        for tensor in (state["encoder"]["w"], state["opt"]["state"][0]["exp_avg"]):
            tensor.add_(1.0)  # training goes on while the file is written
        state["epoch"] = 4
    expected = (tmp_path / "sync.pth").read_bytes()
    assert (tmp_path / "bg.pth").read_bytes() == expected == (tmp_path / "kept.pth").read_bytes()
    loaded = load_checkpoint(tmp_path / "bg.pth")
    assert loaded["encoder"]["w_t"].data_ptr() == loaded["encoder"]["w"].data_ptr()  # views still share
    assert writer.last.write_s > 0 and not list(tmp_path.glob(".*.tmp"))


def test_snapshot_shares_storages_like_the_original():
    state = _state()
    frozen = snapshot(state)
    enc = frozen["encoder"]
    assert enc["w"].data_ptr() != state["encoder"]["w"].data_ptr()
    assert enc["w_t"].untyped_storage().data_ptr() == enc["w"].untyped_storage().data_ptr()
    assert torch.equal(enc["row"], state["encoder"]["w"][3]) and type(enc) is OrderedDict
    assert snapshot(state, copy_cpu=False)["encoder"]["w"] is state["encoder"]["w"]


def test_failed_background_write_keeps_the_previous_checkpoint_and_raises_on_the_caller(tmp_path, monkeypatch):
    path = tmp_path / "jepa-latest.pth.tar"
    save_checkpoint(_state(0), path)
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # part of the file is on disk when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    writer = CheckpointWriter()
    writer.save(_state(1), path)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint .* is intact"):
        writer.wait()
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    writer.save(_state(1), path)  # the error was reported once; the next save starts afresh
    with pytest.raises(CheckpointError):
        writer.save(_state(2), path)  # ...and a later save raises the failure of the one before it
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    writer.save(_state(2), path)
    writer.wait()
    assert torch.equal(load_checkpoint(path)["encoder"]["w"], _state(2)["encoder"]["w"])


CRASH = textwrap.dedent("""
    import os, sys, time, torch
    from openjepa.checkpoint import save_checkpoint
    from openjepa.checkpoint_writer import CheckpointWriter
    path = sys.argv[1]
    save_checkpoint({"w": torch.zeros(1000)}, path)
    real_fsync = os.fsync
    def stuck_fsync(fd):  # the new file is written but not yet renamed: the riskiest moment to die
        print("writing", flush=True)
        time.sleep(60)
    os.fsync = stuck_fsync
    CheckpointWriter().save({"w": torch.ones(1000)}, path)
    time.sleep(60)
""")


def test_killed_during_a_background_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "jepa-latest.pth.tar"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        tmp = list(tmp_path.glob(".jepa-latest.pth.tar.*.tmp"))
        assert len(tmp) == 1 and tmp[0].stat().st_size > 4000  # the new checkpoint, complete but not renamed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(1000))


def test_mmap_load_returns_the_saved_tensors(tmp_path):
    state = _state()
    save_checkpoint(state, tmp_path / "c.pth")
    mapped = load_checkpoint_mmap(tmp_path / "c.pth")
    assert torch.equal(mapped["encoder"]["w"], state["encoder"]["w"])
    assert torch.equal(mapped["opt"]["state"][0]["exp_avg"], state["opt"]["state"][0]["exp_avg"])
    assert mapped["half"].dtype == torch.float16 and torch.equal(mapped["half"], state["half"])
    assert mapped["config"] == state["config"] and mapped["epoch"] == 3
    (tmp_path / "bad.pth").write_text("<html>login</html>")
    with pytest.raises(CheckpointError, match="web page"):
        load_checkpoint_mmap(tmp_path / "bad.pth")


def test_kept_buffers_are_reused_and_files_stay_exact(tmp_path):
    state = _state()
    writer = CheckpointWriter(keep_buffers=True)
    writer.save(state, tmp_path / "a.pth")
    writer.wait()
    first = {k: v.data_ptr() for k, v in writer._buffers.items()}
    state["encoder"]["w"].mul_(2.0)
    writer.save(state, tmp_path / "b.pth")
    writer.wait()
    assert {k: v.data_ptr() for k, v in writer._buffers.items()} == first  # the same host memory, overwritten
    save_checkpoint(state, tmp_path / "sync.pth")
    assert (tmp_path / "b.pth").read_bytes() == (tmp_path / "sync.pth").read_bytes()
