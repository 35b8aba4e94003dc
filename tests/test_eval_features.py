"""Feature extraction, feature files, encoder loading and the `openjepa embed` command."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from openjepa import build_ijepa
from openjepa.checkpoint import add_prefix, save_checkpoint
from openjepa.cli.main import main
from openjepa.config import RunConfig, from_dict
from openjepa.errors import UserError
from openjepa.eval import (
    Features,
    extract_features,
    load_encoder,
    load_features,
    random_init_like,
    read_encoder,
    save_features,
)
from openjepa.models import VisionTransformer

TINY_MODEL = {"arch": "vit_tiny", "embed_dim": 32, "depth": 4, "num_heads": 2, "patch_size": 4, "img_size": 16,
              "in_chans": 1, "pred_depth": 1, "pred_emb_dim": 16}


def tiny_vit(depth: int = 4) -> VisionTransformer:
    return VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=depth, num_heads=2)


def image_dataset(n: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % 3)


def write_checkpoint(path, seed: int = 0):
    """A tiny training checkpoint in the released layout, whose target and context encoders differ."""
    torch.manual_seed(seed)
    cfg = from_dict({"model": TINY_MODEL})
    model = build_ijepa(cfg.model)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {
        "encoder": add_prefix(model.encoder.state_dict()),
        "predictor": add_prefix(model.predictor.state_dict()),
        "target_encoder": add_prefix(model.target_encoder.state_dict()),
        "epoch": 3, "loss": 0.5, "batch_size": 8, "world_size": 1, "lr": 1e-3, "step": 42,
        "config": cfg.to_dict(),
    }
    save_checkpoint(state, path)
    return model


def test_mean_and_concat4_shapes_and_values():
    encoder, data = tiny_vit(), image_dataset(10)
    images = data.tensors[0]
    mean = extract_features(encoder, data, "mean", batch_size=4, progress=False)
    cat4 = extract_features(encoder, data, "concat4", batch_size=3, progress=False)
    assert mean.x.shape == (10, 32) and cat4.x.shape == (10, 128)
    assert torch.equal(mean.y, data.tensors[1]) and torch.equal(cat4.y, data.tensors[1])
    with torch.no_grad():
        expected = encoder(images).mean(1)
        blocks = encoder.get_intermediate_layers(images, 4)
    torch.testing.assert_close(mean.x, expected, atol=1e-5, rtol=1e-5)
    for i, h in enumerate(blocks):  # block order: oldest first, each through the final norm
        torch.testing.assert_close(cat4.x[:, 32 * i:32 * (i + 1)], h.mean(1), atol=1e-5, rtol=1e-5)
    # the last block through the final norm is the encoder's output
    torch.testing.assert_close(cat4.x[:, 96:], mean.x, atol=1e-5, rtol=1e-5)


def test_extraction_restores_mode_and_leaves_global_rng_alone():
    encoder = tiny_vit()
    encoder.train()
    before = torch.get_rng_state()
    extract_features(encoder, image_dataset(6), batch_size=4, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert encoder.training


def test_concat4_needs_four_blocks_and_unlabelled_data_gets_minus_one():
    with pytest.raises(UserError, match="at least 4 blocks"):
        extract_features(tiny_vit(depth=2), image_dataset(4), "concat4", progress=False)
    images_only = DataLoader(TensorDataset(torch.randn(5, 1, 16, 16)), batch_size=2,
                             collate_fn=lambda rows: torch.stack([r[0] for r in rows]))
    feats = extract_features(tiny_vit(), images_only, progress=False)
    assert feats.x.shape == (5, 32) and (feats.y == -1).all() and not feats.has_labels


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_feature_files_round_trip(tmp_path, suffix):
    feats = Features(torch.randn(7, 5), torch.arange(7), {"pool": "mean", "which": "target", "epoch": None})
    path = save_features(feats, tmp_path / f"f{suffix}")
    back = load_features(path)
    assert torch.equal(back.x, feats.x) and torch.equal(back.y, feats.y) and back.meta == feats.meta
    with pytest.raises(UserError, match=r"\.npz or \.safetensors"):
        save_features(feats, tmp_path / "f.pt")


def test_load_encoder_picks_target_or_context(tmp_path):
    model = write_checkpoint(tmp_path / "ckpt.pth.tar")
    target = load_encoder(tmp_path / "ckpt.pth.tar")
    context = load_encoder(tmp_path / "ckpt.pth.tar", which="context")
    assert target.arch() == model.target_encoder.arch() and not target.training
    for name, tensor in model.target_encoder.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(context.state_dict()[name], tensor), name
    assert not torch.equal(target.norm.weight, context.norm.weight)
    loaded = read_encoder(tmp_path / "ckpt.pth.tar")
    assert loaded.epoch == 3 and loaded.step == 42 and loaded.run_config["model"]["depth"] == 4


def test_random_init_like_is_seeded_and_leaves_global_rng_alone():
    trained = tiny_vit()
    before = torch.get_rng_state()
    a, b, c = random_init_like(trained, 0), random_init_like(trained, 0), random_init_like(trained, 1)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.arch() == trained.arch()
    assert torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def test_embed_cli_writes_npz_and_safetensors(tmp_path, capsys):
    write_checkpoint(tmp_path / "run" / "ckpt.pth.tar")
    ckpt = str(tmp_path / "run" / "ckpt.pth.tar")
    assert main(["embed", "--checkpoint", ckpt, "--out", str(tmp_path / "test.npz"), "--device", "cpu"]) == 0
    assert "wrote 450 labelled mean-pooled features of dimension 32" in capsys.readouterr().out
    with np.load(tmp_path / "test.npz") as f:
        assert f["features"].shape == (450, 32) and f["features"].dtype == np.float32
        assert sorted(set(f["labels"].tolist())) == list(range(10))
    assert main(["embed", "--checkpoint", ckpt, "--split", "train", "--pool", "concat4", "--which", "context",
                 "--out", str(tmp_path / "train.safetensors"), "--batch-size", "500"]) == 0
    tensors = load_file(str(tmp_path / "train.safetensors"))
    assert tensors["features"].shape == (1347, 128) and tensors["labels"].shape == (1347,)
    meta = load_features(tmp_path / "train.safetensors").meta
    assert meta["which"] == "context" and meta["split"] == "train" and meta["pool"] == "concat4"
    assert meta["dataset"] == "digits" and meta["step"] == 42


def test_embed_cli_reports_bad_output_and_missing_checkpoint(tmp_path, capsys):
    assert main(["embed", "--checkpoint", str(tmp_path / "none.pth.tar"), "--out", str(tmp_path / "x.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err
    write_checkpoint(tmp_path / "c.pth.tar")
    assert main(["embed", "--checkpoint", str(tmp_path / "c.pth.tar"), "--out", str(tmp_path / "x.csv")]) == 1
    assert ".npz or .safetensors" in capsys.readouterr().err


def test_run_config_default_is_valid():
    # the checkpoint records RunConfig().to_dict(); it must read back
    assert from_dict(RunConfig().to_dict()).eval.pool == "mean"


def test_embed_cli_needs_data_for_a_checkpoint_without_run_config(tmp_path, capsys):
    # a released-style file: the three networks and no `config` (width 64: the head count is read as 64/64 = 1)
    model = build_ijepa(from_dict({"model": {**TINY_MODEL, "embed_dim": 64, "num_heads": 1}}).model)
    save_checkpoint({"encoder": add_prefix(model.encoder.state_dict()),
                     "predictor": add_prefix(model.predictor.state_dict()),
                     "target_encoder": add_prefix(model.target_encoder.state_dict()), "epoch": 1},
                    tmp_path / "released.pth.tar")
    args = ["embed", "--checkpoint", str(tmp_path / "released.pth.tar"), "--out", str(tmp_path / "f.npz")]
    assert main(args) == 1
    assert "records no run config" in capsys.readouterr().err
    assert main(args + ["--data", "digits"]) == 0
    assert load_features(tmp_path / "f.npz").x.shape == (450, 64)
