"""Checkpoint files from elsewhere, through every CLI entry point that reads one: a truncated file, a file in
another format, the weights of another architecture or of another kind of network, and a malicious pickle each
end with a one-paragraph error (exit status 1, no traceback), and nothing in the file is ever run.

The loaders themselves are tested in test_safe_loading; this proves the commands a user types go through them.
"""

import pytest
import torch
from test_robustness_inputs import cli_error
from test_safe_loading import Payload
from test_train import TINY, tiny_config

from openjepa.train import pretrain

ENTRY_POINTS = ["pretrain --resume FILE", "pretrain --resume DIR", "export", "convert official", "embed",
                "eval linear", "viz features"]


def argv_for(entry: str, bad, tmp) -> tuple[str, list[str]]:
    """The subcommand and the command line of ``entry`` reading the checkpoint ``bad``."""
    resume = ["--resume", str(bad.parent if entry.endswith("DIR") else bad), *TINY, "data.batch_size=16",
              f"train.out_dir={bad.parent if entry.endswith('DIR') else tmp / 'run'}"]
    return {
        "pretrain --resume FILE": ("pretrain", ["pretrain", *resume]),
        "pretrain --resume DIR": ("pretrain", ["pretrain", *resume]),
        "export": ("export", ["export", "--checkpoint", str(bad), "--out", str(tmp / "out")]),
        "convert official": ("convert", ["convert", "official", str(bad), "--out", str(tmp / "out")]),
        "embed": ("embed", ["embed", "--checkpoint", str(bad), "--device", "cpu", "--out", str(tmp / "f.npz")]),
        "eval linear": ("eval", ["eval", "linear", "--checkpoint", str(bad), "--device", "cpu",
                                 "--out", str(tmp / "r.json")]),
        "viz features": ("viz", ["viz", "features", "--checkpoint", str(bad), "--out", str(tmp / "p.png")]),
    }[entry]


KINDS = {
    # kind: words the message must hold
    "truncated": "the file is truncated, corrupt or not a PyTorch checkpoint",
    "text": "not a PyTorch checkpoint: it is a text file",
    "random bytes": "its content is in no format openjepa reads",
    "another network": "not an I-JEPA",
    "malicious pickle": "refusing to load",
}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("good") / "run"
    pretrain(tiny_config(run, "data.batch_size=16", "train.max_steps=1"))
    return run / "jepa-latest.pth.tar"


def make_bad(kind: str, folder, good) -> tuple:
    """A bad checkpoint file of ``kind`` in ``folder``, and the marker a malicious payload would create."""
    path, marker = folder / "jepa-latest.pth.tar", folder / "payload-ran"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])  # a copy cut short
    elif kind == "text":
        path.write_text("epoch 10, loss 0.31\n")
    elif kind == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "another network":
        resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}
        torch.save(resnet, path)
    else:
        torch.save({"encoder": {"module.pos_embed": Payload(marker)}, "predictor": {}, "target_encoder": {},
                    "epoch": 1}, path)
    return path, marker


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_bad_checkpoint_is_refused_clearly(entry, kind, good_checkpoint, tmp_path, capsys):
    bad, marker = make_bad(kind, tmp_path / "ckpt", good_checkpoint)
    command, argv = argv_for(entry, bad, tmp_path)
    message = cli_error(capsys, argv, command)
    assert KINDS[kind] in message, message
    assert str(bad) in message
    assert not marker.exists()  # the payload never ran
    assert not any((tmp_path / name).exists() for name in ("out", "f.npz", "r.json", "p.png"))


def test_weights_of_another_size_are_refused_by_resume(good_checkpoint, tmp_path, capsys):
    """A real openjepa checkpoint of another architecture: the message names the mismatches and the fix."""
    argv = ["pretrain", f"--resume={good_checkpoint}", *TINY, "model.embed_dim=48", "data.batch_size=16",
            f"train.out_dir={tmp_path / 'run'}"]
    message = cli_error(capsys, argv)
    assert "the context encoder weights do not fit the model" in message
    assert "checkpoint (1, 64, 32) vs model (1, 64, 48)" in message
    assert "check that the config's model section" in message
