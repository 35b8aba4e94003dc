"""Fine-tuning: learns what is learnable (and not shuffled labels), layer-wise learning rates, a held-out split
disjoint from the images trained on, exact resume after SIGTERM, low-shot runs and draws, clear errors."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_config

from openjepa.checkpoint import CheckpointError, load_checkpoint
from openjepa.cli.main import main
from openjepa.errors import UserError
from openjepa.finetune import (
    BEST,
    LATEST,
    FineTuner,
    choose_splits,
    finetune,
    layer_id,
    load_finetune_config,
    make_finetune_optimizer,
)
from openjepa.finetune.data import build_finetune_data
from openjepa.finetune.optim import set_lr
from openjepa.interop import ExportInfo, export_hf
from openjepa.models import ViTClassifier, vit_encoder
from openjepa.train import pretrain

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "digits.yaml"
TINY = ["model.arch=vit_tiny", "model.embed_dim=16", "model.depth=2", "model.num_heads=2", "model.patch_size=4",
        "model.img_size=16", "model.in_chans=1", "data.batch_size=32", "optim.warmup_epochs=1", "train.threads=1"]


def config(out_dir, *extra):
    return load_finetune_config(RECIPE, TINY + [f"train.out_dir={out_dir}", *extra])


def halves(root, shuffle=False, per_class=60, test_per_class=30):
    """16x16 grey images whose left, right or top half is brighter (the class), in train/ and val/ class folders;
    with ``shuffle`` each image lands in a random class folder."""
    rng = np.random.default_rng(0)
    regions = {"left": np.s_[:, :8], "right": np.s_[:, 8:], "top": np.s_[:8, :]}
    for split, n in (("train", per_class), ("val", test_per_class)):
        for name, region in regions.items():
            for i in range(n):
                pixels = rng.uniform(0, 90, (16, 16))
                pixels[region] += 120
                folder = Path(root) / split / (list(regions)[rng.integers(3)] if shuffle else name)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}{i}.png")
    return str(root)


def test_learns_a_separable_task_and_not_shuffled_labels(tmp_path):
    args = ["data.dataset=folder", "optim.epochs=8", "optim.lr=3e-3", "finetune.head_init=random"]
    clean = finetune(config(tmp_path / "run", *args, f"data.path={halves(tmp_path / 'data')}"))
    noise = finetune(config(tmp_path / "noise", *args, f"data.path={halves(tmp_path / 'shuffled', shuffle=True)}"))
    assert clean.stop_reason == "completed" and clean.top1 >= 0.9  # measured 0.97
    assert noise.top1 <= 0.55  # chance is 1/3
    assert clean.best["epoch"] > 0 and clean.n_test == 90 and clean.n_train + clean.n_holdout == 180
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["top1"] == clean.top1 and final["classes"] == ["left", "right", "top"]
    for name in ("config.yaml", "metrics.csv", "monitor.csv", "splits.json", LATEST, BEST):
        assert (tmp_path / "run" / name).is_file(), name
    # what train.precision=auto resolved to heads config.yaml, as in pretraining (the suite fixes fp32)
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("# train.precision=auto resolved to fp32 here")


def test_layer_wise_decay_gives_each_block_its_documented_rate(tmp_path):
    model = ViTClassifier(vit_encoder("vit_tiny", patch_size=4, img_size=8, embed_dim=16, depth=3, num_heads=2), 4)
    optimizer = make_finetune_optimizer(model, weight_decay=0.05, layer_decay=0.5)
    set_lr(optimizer, 1e-3)
    expected = {0: 1e-3 * 0.5 ** 4, 1: 1e-3 * 0.5 ** 3, 2: 1e-3 * 0.5 ** 2, 3: 1e-3 * 0.5, 4: 1e-3}
    names = {}
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(expected[group["layer"]])
        for name in group["names"]:
            names[name] = group
            assert layer_id(name, 3) == group["layer"]
            assert (group["weight_decay"] == 0.05) == (name.endswith("weight") and "norm" not in name)
    assert names["encoder.patch_embed.proj.weight"]["layer"] == 0 and names["encoder.blocks.0.attn.qkv.weight"][
        "layer"] == 1 and names["encoder.blocks.2.mlp.fc2.bias"]["layer"] == 3
    assert names["head.weight"]["layer"] == names["encoder.norm.weight"]["layer"] == 4
    assert "encoder.pos_embed" not in names  # frozen sin-cos table: not trained
    # ... and the training loop uses those rates: one step without warm-up, then the saved optimizer state
    finetune(config(tmp_path / "run", "optim.warmup_epochs=0", "optim.layer_decay=0.5", "optim.lr=2e-3",
                    "data.max_samples=160", "train.max_steps=1", "finetune.head_init=random"))
    groups = load_checkpoint(tmp_path / "run" / LATEST)["opt"]["param_groups"]
    assert sorted({(g["layer"], g["lr"]) for g in groups}) == [(0, 2e-3 / 8), (1, 2e-3 / 4), (2, 2e-3 / 2), (3, 2e-3)]


def test_held_out_images_never_overlap_the_images_trained_on(tmp_path):
    labels = np.repeat(np.arange(5), 40)
    for extra in ([], ["finetune.labels_per_class=12"], ["finetune.label_fraction=0.25"]):
        splits = choose_splits(labels, config(tmp_path, *extra))
        assert len(np.intersect1d(splits.train, splits.holdout)) == 0
        pool = splits.low_shot if splits.low_shot is not None else np.arange(len(labels))
        assert np.array_equal(np.sort(np.concatenate([splits.train, splits.holdout])), pool)
        per_class = np.bincount(labels[splits.holdout], minlength=5)
        assert per_class.min() >= 1 and per_class.max() - per_class.min() <= 1  # stratified
    # the datasets a run reads are built from those splits: compare the images themselves (digits has no
    # duplicate images)
    data = build_finetune_data(config(tmp_path / "run", "data.max_samples=200"), 16, 1, None)
    trained_on, held_out = data.loader.dataset.source, data.holdout.source
    assert np.array_equal(trained_on.indices, data.splits.train)
    assert np.array_equal(held_out.indices, data.splits.holdout)
    train_pixels = {trained_on.open(i).pixels.tobytes() for i in range(len(trained_on))}
    held_pixels = {held_out.open(i).pixels.tobytes() for i in range(len(held_out))}
    assert len(train_pixels) + len(held_pixels) == 200 and not train_pixels & held_pixels
    assert data.test.source.split == "test"


def _weights(run_dir):
    return load_checkpoint(Path(run_dir) / LATEST)["model"]


def _rows(run_dir, name):
    with open(Path(run_dir) / name, newline="") as f:
        return [{k: v for k, v in r.items() if not k.endswith("_ms") and k != "images_per_s"}
                for r in csv.DictReader(f)]


def test_resume_after_sigterm_is_exact(tmp_path, monkeypatch):
    args = ["data.max_samples=192", "optim.epochs=2", "finetune.eval_every=1"]  # augmentation and drop-path on
    whole = finetune(config(tmp_path / "whole", *args))
    assert whole.stop_reason == "completed" and whole.position.global_step == 10

    step = FineTuner._step

    def step_then_sigterm(self, images, labels):
        out = step(self, images, labels)
        if self.position.global_step == 6:  # the 7th step (mid-epoch 2) is under way: SIGTERM arrives
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(FineTuner, "_step", step_then_sigterm)
    stopped = finetune(config(tmp_path / "cut", *args))
    assert stopped.stop_reason == "interrupted" and stopped.signal == signal.SIGTERM
    assert load_checkpoint(tmp_path / "cut" / LATEST)["step"] == 7
    monkeypatch.setattr(FineTuner, "_step", step)
    resumed = finetune(config(tmp_path / "cut", *args), resume=tmp_path / "cut" / LATEST)
    assert resumed.stop_reason == "completed" and resumed.top1 == whole.top1 and resumed.best == whole.best
    for key, value in _weights(tmp_path / "whole").items():
        assert torch.equal(value, _weights(tmp_path / "cut")[key]), key
    for name in ("metrics.csv", "monitor.csv"):
        assert _rows(tmp_path / "whole", name) == _rows(tmp_path / "cut", name)


def test_low_shot_fine_tuning_from_a_hugging_face_folder(tmp_path, capsys):
    torch.manual_seed(0)
    encoder = vit_encoder("vit_tiny", patch_size=4, img_size=16, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    export_hf(encoder, tmp_path / "hf", info=ExportInfo(mean=[0.3], std=[0.4]))
    common = ["finetune", "-c", str(RECIPE), "--init", str(tmp_path / "hf"), "optim.epochs=1", "data.batch_size=8",
              "train.threads=1"]
    assert main([*common, "--labels-per-class", "4", f"train.out_dir={tmp_path / 'one'}"]) == 0
    final = json.loads((tmp_path / "one" / "final.json").read_text())
    assert final["n_train"] + final["n_holdout"] == 40 and len(final["low_shot_indices"]) == 40
    assert final["init"] == str(tmp_path / "hf") and final["n_test"] == 450
    state = load_checkpoint(tmp_path / "one" / BEST)
    assert state["info"]["mean"] == [0.3] and state["info"]["std"] == [0.4]  # the encoder's normalisation
    assert state["arch"]["embed_dim"] == 16 and state["arch"]["depth"] == 1  # the folder's encoder, not the recipe's
    assert main([*common, "--label-fraction", "0.03", "--draws", "2", f"train.out_dir={tmp_path / 'two'}"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned top-1" in out and "(2 draws of 3% of the labels" in out
    summary = json.loads((tmp_path / "two" / "low_shot.json").read_text())
    first, second = (d["indices"] for d in summary["draws"])
    assert [d["seed"] for d in summary["draws"]] == [0, 1] and first != second and len(first) == 40


def test_clear_errors(tmp_path):
    with pytest.raises(UserError, match="load_pretrained"):
        finetune(config(tmp_path / "a", "finetune.init=runs/somewhere"))
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "jepa-latest.pth.tar").write_bytes(b"")
    with pytest.raises(UserError, match="holds a pretraining run"):
        finetune(config(tmp_path / "pre"))
    torch.save({"encoder": {}}, tmp_path / "other.pth.tar")
    with pytest.raises(CheckpointError, match="not a fine-tuning training checkpoint"):
        finetune(config(tmp_path / "b"), resume=tmp_path / "other.pth.tar")
    with pytest.raises(Exception, match="layer_decay"):
        config(tmp_path, "optim.layer_decay=1.5")


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    args = ["data.max_samples=160", "optim.epochs=1", "optim.drop_path=0"]  # drop-path noise differs per process
    one = finetune(config(tmp_path / "one", *args, "data.batch_size=16"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "openjepa", "finetune", "-c", str(RECIPE), *TINY, *args,
           "data.batch_size=8", f"train.out_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    losses = [[float(r["loss"]) for r in _rows(tmp_path / run, "metrics.csv")] for run in ("one", "two")]
    assert len(losses[0]) == len(losses[1]) == 9 and np.allclose(losses[0], losses[1], atol=1e-5)
    for key, value in _weights(tmp_path / "one").items():
        other = _weights(tmp_path / "two")[key]
        if key.endswith("attn.qkv.bias"):  # the key bias shifts every logit of a query equally: its true gradient
            value, other = value[torch.arange(48) // 16 != 1], other[torch.arange(48) // 16 != 1]  # is 0 (Adam
            # turns the float noise of the two reductions into steps of its own)
        # The head folds the feature normalisation in (bias = b - W mean / std): its entries are differences of
        # terms in the hundreds, whose rounding scales with the largest of them.
        scale = max(1.0, value.abs().max().item())
        assert torch.allclose(value, other, rtol=1e-5, atol=1e-5 * scale), key
    assert json.loads((tmp_path / "two" / "final.json").read_text())["top1"] == pytest.approx(one.top1, abs=1e-6)


def test_pretraining_refuses_a_fine_tuning_run_folder(tmp_path):
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / LATEST).write_bytes(b"")
    with pytest.raises(UserError, match="holds a fine-tuning run"):
        pretrain(tiny_config(tmp_path / "ft"))


@pytest.mark.parametrize("epochs, augment, advised", [(1, True, True), (2, True, True), (3, True, False),
                                                      (1, False, False)])
def test_a_short_run_on_augmented_images_is_told_what_did_better(tmp_path, capsys, epochs, augment, advised):
    # docs/benchmarks.md, "Fine-tuning in one epoch": crops and flips cost more than they teach in one epoch
    finetune(config(tmp_path / "run", f"optim.epochs={epochs}", f"finetune.augment={str(augment).lower()}",
                    "data.max_samples=160", "train.max_steps=1", "finetune.head_init=random"))
    out = capsys.readouterr().out
    assert ("finetune.augment=false optim.drop_path=0 finetune.head_init=random" in out) == advised
