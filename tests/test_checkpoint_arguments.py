"""Every command that reads a trained model takes a run folder or a checkpoint file alike (its ``--checkpoint``,
or convert's positional file): both load the same weights, through the one loader of openjepa.pretrained."""

import json

import pytest
import torch
from test_train import tiny_config

from openjepa.cli.main import main
from openjepa.interop import load_exported, load_hf, load_timm
from openjepa.pretrained import load_encoder, load_trained
from openjepa.run_folder import LATEST
from openjepa.train import pretrain

EVAL_SIZES = ["eval.final_train_samples=64", "eval.final_test_samples=64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained") / "run"
    pretrain(tiny_config(folder, "data.batch_size=16", "train.max_steps=2"))
    return folder


# (command line with {ckpt} and {out}, the file or folder it writes)
COMMANDS = {
    "export openjepa": (["export", "--checkpoint", "{ckpt}", "--out", "{out}"], "config.json"),
    "export hf": (["export", "--checkpoint", "{ckpt}", "--format", "hf", "--out", "{out}"], "config.json"),
    "export timm": (["export", "--checkpoint", "{ckpt}", "--format", "timm", "--out", "{out}"], "config.json"),
    "convert official": (["convert", "official", "{ckpt}", "--out", "{out}"], "config.json"),
    "embed": (["embed", "--checkpoint", "{ckpt}", "--device", "cpu", "--out", "{out}/f.npz"], "f.npz"),
    "eval knn": (["eval", "knn", "--checkpoint", "{ckpt}", "--device", "cpu", "--out", "{out}/r.json"], "r.json"),
    "eval linear": (["eval", "linear", "--checkpoint", "{ckpt}", "--device", "cpu", "--weight-decays", "1e-3",
                     "--out", "{out}/r.json"], "r.json"),
    "viz features": (["viz", "features", "--checkpoint", "{ckpt}", "--device", "cpu", "--count", "2",
                      "--out", "{out}/p.png"], "p.png"),
    "viz predictions": (["viz", "predictions", "--checkpoint", "{ckpt}", "--device", "cpu", "--queries", "2",
                         "--bank", "8", "--out", "{out}/p.png"], "p.png"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_takes_a_run_folder_or_a_checkpoint_file(command, run, tmp_path, capsys):
    argv, written = COMMANDS[command]
    outputs = {}
    for kind, ckpt in (("folder", run), ("file", run / LATEST)):
        out = tmp_path / kind
        out.mkdir()
        line = [a.format(ckpt=ckpt, out=out) for a in argv]
        assert main(line) == 0, capsys.readouterr().err
        assert (out / written).exists()
        outputs[kind] = out / written
    if written == "config.json":
        loader = {"export hf": load_hf, "export timm": load_timm}.get(command, load_exported)
        folder, file = (loader(outputs[k].parent) for k in ("folder", "file"))
        for key, value in folder.state_dict().items():
            assert torch.equal(value, file.state_dict()[key]), key
    if written == "r.json":
        assert json.loads(outputs["folder"].read_text())["top1"] == json.loads(outputs["file"].read_text())["top1"]


def test_the_loader_resolves_a_run_folder_to_its_latest_checkpoint(run):
    from_folder, from_file = load_encoder(run), load_encoder(run / LATEST)
    for key, value in from_folder.state_dict().items():
        assert torch.equal(value, from_file.state_dict()[key]), key
    trained = load_trained(run)
    assert trained.origin == str(run / LATEST) and trained.recorded is not None
