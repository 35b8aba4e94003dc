"""Every command that reads a trained model takes a run folder or a checkpoint file alike (its ``--checkpoint``,
``--init``, ``--model`` or ``--resume``, or convert's positional file): both load the same weights, through the one
loader of openjepa.pretrained. Pretraining runs and fine-tuning runs alike."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_config

from openjepa.checkpoint import load_checkpoint
from openjepa.cli.main import main
from openjepa.finetune import finetune, load_finetune_config
from openjepa.interop import load_exported, load_hf, load_hf_classifier, load_pretrained, load_timm
from openjepa.pretrained import load_encoder, load_trained, read_classifier
from openjepa.run_folder import FINETUNE_BEST, FINETUNE_LATEST, LATEST
from openjepa.train import pretrain

EVAL_SIZES = ["eval.final_train_samples=64", "eval.final_test_samples=64"]
FINETUNE = ["optim.epochs=1", "data.max_samples=96", "data.batch_size=16", "finetune.head_init=random",
            "train.threads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained") / "run"
    pretrain(tiny_config(folder, "data.batch_size=16", "train.max_steps=2"))
    return folder


@pytest.fixture(scope="module")
def finetuned(run, tmp_path_factory):
    """A fine-tuning run of ``run``'s encoder, stopped after 2 steps (its latest and best checkpoints are there)."""
    folder = tmp_path_factory.mktemp("finetuned") / "run"
    finetune(load_finetune_config("digits", [*FINETUNE, "train.max_steps=2", f"train.out_dir={folder}"]),
             load_pretrained(run))
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
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


# The commands of downstream use: (command line with {ckpt}, {out} and {images}, the file or folder it writes, the
# run it reads: a pretraining run or a fine-tuning run, whose file is its latest checkpoint or its classifier).
DOWNSTREAM = {
    "eval attentive": (["eval", "attentive", "--checkpoint", "{ckpt}", "--device", "cpu", "--epochs", "1",
                        "--min-steps", "4", "--lrs", "1e-3", "--weight-decays", "0.01", "--out", "{out}/r.json"],
                       "r.json", "pretraining"),
    "finetune --init": (["finetune", "--init", "{ckpt}", "-c", "digits", *FINETUNE, "train.out_dir={out}/run"],
                        "run/final.json", "pretraining"),
    "predict --model": (["predict", "--model", "{ckpt}", "--images", "{images}", "--device", "cpu", "--out",
                         "{out}/p.csv"], "p.csv", "fine-tuning"),
    "export hf (classifier)": (["export", "--checkpoint", "{ckpt}", "--format", "hf", "--out", "{out}"],
                               "config.json", "fine-tuning"),
    "eval knn (fine-tuned encoder)": (["eval", "knn", "--checkpoint", "{ckpt}", "--device", "cpu", "--out",
                                       "{out}/r.json"], "r.json", "fine-tuning"),
    "finetune --resume": (["finetune", "--resume", "{ckpt}", "train.max_steps=3"], FINETUNE_LATEST, "resume"),
}


def outputs_of(argv, written, folder, file, tmp_path, capsys, images=""):
    """Run the command line once with the run folder and once with the checkpoint file; the files it wrote."""
    outputs = {}
    for kind, ckpt in (("folder", folder), ("file", file)):
        out = tmp_path / kind
        out.mkdir()
        line = [a.format(ckpt=ckpt, out=out, images=images) for a in argv]
        assert main(line) == 0, capsys.readouterr().err
        assert (out / written).exists()
        outputs[kind] = out / written
    return outputs


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_takes_a_run_folder_or_a_checkpoint_file(command, run, tmp_path, capsys):
    argv, written = COMMANDS[command]
    outputs = outputs_of(argv, written, run, run / LATEST, tmp_path, capsys)
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


@pytest.mark.parametrize("command", list(DOWNSTREAM))
def test_each_downstream_command_takes_a_run_folder_or_a_checkpoint_file(command, run, finetuned, images, tmp_path,
                                                                          capsys):
    argv, written, source = DOWNSTREAM[command]
    if source == "resume":  # resuming writes into the run: each resumes a copy of its own
        copies = [shutil.copytree(finetuned, tmp_path / f"copy-{kind}") for kind in ("folder", "file")]
        for kind, ckpt in (("folder", copies[0]), ("file", copies[1] / FINETUNE_LATEST)):
            assert main([a.format(ckpt=ckpt) for a in argv]) == 0, capsys.readouterr().err
        states = [load_checkpoint(copy / FINETUNE_LATEST) for copy in copies]
        assert states[0]["step"] == states[1]["step"] == 3
        for key, value in states[0]["model"].items():
            assert torch.equal(value, states[1]["model"][key]), key
        return
    folder = run if source == "pretraining" else finetuned
    file = folder / (LATEST if source == "pretraining" else FINETUNE_BEST)
    outputs = outputs_of(argv, written, folder, file, tmp_path, capsys, images)
    if written == "config.json":
        folder_model, file_model = (load_hf_classifier(outputs[k].parent) for k in ("folder", "file"))
        for key, value in folder_model.state_dict().items():
            assert torch.equal(value, file_model.state_dict()[key]), key
    elif written.endswith(".json"):
        assert json.loads(outputs["folder"].read_text())["top1"] == json.loads(outputs["file"].read_text())["top1"]
    else:
        assert outputs["folder"].read_text() == outputs["file"].read_text()


def test_the_loader_reads_a_fine_tuning_run_folder_as_its_classifier(finetuned):
    model, info = read_classifier(finetuned)
    assert info.classes == [str(i) for i in range(10)]
    from_folder, from_file = load_encoder(finetuned), load_encoder(finetuned / FINETUNE_BEST)
    for key, value in from_folder.state_dict().items():
        assert torch.equal(value, from_file.state_dict()[key]) and torch.equal(value, model.encoder.state_dict()[key])
