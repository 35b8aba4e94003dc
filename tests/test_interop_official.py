"""Released I-JEPA checkpoints: architecture inference, strict loading, resolution change, resuming training.

No released file can be downloaded here, so the files are written in the released format from small models:
``module.``-prefixed state dicts, an AdamW state built the way the released code builds its parameter groups,
``scaler``/``epoch``/``loss``/``batch_size``/``world_size``/``lr``.
"""

import json

import pytest
import torch

from openjepa import MultiBlockMaskSampler, build_ijepa, load_official
from openjepa.checkpoint import CheckpointError
from openjepa.cli.main import main
from openjepa.interop import (
    encoder_arch,
    load_exported,
    load_official_encoder,
    load_optimizer_state,
    model_config_from_weights,
    official_to_training_state,
    read_export_info,
)
from openjepa.models import resample_pos_embed
from openjepa.step import make_optimizer, train_step

TINY = dict(arch="vit_tiny", patch_size=4, img_size=16, depth=2, pred_depth=2, pred_emb_dim=48)


def released_style_optimizer(model):
    """AdamW groups as the released code makes them, written independently of IJEPA.param_groups()."""

    def params(module, decay):
        return [p for n, p in module.named_parameters() if (("bias" not in n) and len(p.shape) != 1) == decay]

    groups = [
        {"params": params(model.encoder, True)},
        {"params": params(model.predictor, True)},
        {"params": params(model.encoder, False), "WD_exclude": True, "weight_decay": 0},
        {"params": params(model.predictor, False), "WD_exclude": True, "weight_decay": 0},
    ]
    return torch.optim.AdamW(groups, lr=1e-3)


def fixed_batch(model, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    masks = MultiBlockMaskSampler(model.encoder.grid_size, min_keep=2).sample(4, g)
    return torch.randn(4, model.encoder.in_chans, size, size, generator=g), masks.context, masks.targets


def step(model, optimizer, batch):
    return train_step(model, optimizer, *batch, lr=1e-3, weight_decay=0.04, momentum=0.99).loss.item()


def released_file(path, model, optimizer, epoch=3):
    prefixed = {name: {f"module.{k}": v for k, v in getattr(model, name).state_dict().items()}
                for name in ("encoder", "predictor", "target_encoder")}
    torch.save({**prefixed, "opt": optimizer.state_dict(), "scaler": None, "epoch": epoch, "loss": 0.12,
                "batch_size": 4, "world_size": 1, "lr": 1e-3}, path)
    return path


@pytest.fixture
def trained(tmp_path):
    """A tiny model after two released-style optimizer steps, and its released-format file."""
    torch.manual_seed(0)
    model = build_ijepa(**TINY)
    optimizer = released_style_optimizer(model)
    batch = fixed_batch(model)
    for _ in range(2):
        step(model, optimizer, batch)
    return model, optimizer, batch, released_file(tmp_path / "IN1K-tiny.pth.tar", model, optimizer)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_loads_three_networks_with_inferred_architecture(trained):
    model, _, _, path = trained
    loaded = load_official(path)
    assert loaded.encoder.arch() == model.encoder.arch()
    assert loaded.predictor.arch() == model.predictor.arch()
    assert_same_weights(loaded.encoder, model.encoder)
    assert_same_weights(loaded.target_encoder, model.target_encoder)
    assert_same_weights(loaded.predictor, model.predictor)
    # The EMA made the two encoders differ: each network got its own weights.
    assert not torch.equal(loaded.encoder.blocks[0].attn.qkv.weight, loaded.target_encoder.blocks[0].attn.qkv.weight)
    assert not loaded.encoder.pos_embed.requires_grad
    assert not any(p.requires_grad for p in loaded.target_encoder.parameters())


def shapes_only(prefix, width, depth, hidden, extra):
    """A ``module.``-prefixed state dict of meta tensors (shapes, no memory) in the released key layout."""
    shapes = dict(extra)
    for i in range(depth):
        b = f"{prefix}{i}."
        shapes.update({b + "norm1.weight": (width,), b + "norm1.bias": (width,),
                       b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
                       b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
                       b + "norm2.weight": (width,), b + "norm2.bias": (width,),
                       b + "mlp.fc1.weight": (hidden, width), b + "mlp.fc1.bias": (hidden,),
                       b + "mlp.fc2.weight": (width, hidden), b + "mlp.fc2.bias": (width,)})
    return {f"module.{k}": torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize(
    ("name", "width", "depth", "hidden", "patch", "size", "pred_depth", "heads"),
    [("IN1K-vit.h.14-300e", 1280, 32, 5120, 14, 224, 12, 16),
     ("IN22K-vit.h.14-900e", 1280, 32, 5120, 14, 224, 12, 16),
     ("IN1K-vit.h.16-448px-300e", 1280, 32, 5120, 16, 448, 12, 16),
     ("IN22K-vit.g.16-600e", 1408, 40, 6144, 16, 224, 16, 16)],
)
def test_released_architectures_are_recognised(name, width, depth, hidden, patch, size, pred_depth, heads):
    grid = (size // patch) ** 2
    encoder = shapes_only("blocks.", width, depth, hidden, {
        "pos_embed": (1, grid, width), "patch_embed.proj.weight": (width, 3, patch, patch),
        "patch_embed.proj.bias": (width,), "norm.weight": (width,), "norm.bias": (width,)})
    predictor = shapes_only("predictor_blocks.", 384, pred_depth, 1536, {
        "predictor_embed.weight": (384, width), "predictor_embed.bias": (384,), "mask_token": (1, 1, 384),
        "predictor_pos_embed": (1, grid, 384), "predictor_norm.weight": (384,), "predictor_norm.bias": (384,),
        "predictor_proj.weight": (width, 384), "predictor_proj.bias": (width,)})
    cfg = model_config_from_weights(encoder, predictor)
    preset = "vit_giant" if width == 1408 else "vit_huge"
    assert (cfg.arch, cfg.patch_size, cfg.img_size, cfg.pred_depth, cfg.pred_emb_dim) == (
        preset, patch, size, pred_depth, 384)
    assert cfg.encoder_kwargs()["num_heads"] == heads and cfg.encoder_kwargs()["depth"] == depth
    assert encoder_arch(encoder)["mlp_ratio"] == (48 / 11 if width == 1408 else 4.0)


def test_infers_patch_size_channels_width_and_depth(tmp_path):
    model = build_ijepa(arch="vit_small", patch_size=8, img_size=32, in_chans=1, depth=2, pred_depth=1,
                        pred_emb_dim=96)
    path = released_file(tmp_path / "grey.pth.tar", model, released_style_optimizer(model))
    loaded = load_official(path)
    arch = loaded.encoder.arch()
    assert (arch["patch_size"], arch["in_chans"], arch["embed_dim"], arch["depth"]) == (8, 1, 384, 2)
    assert arch["num_heads"] == 6  # from the vit_small preset: heads are not recorded in the shapes
    assert arch["img_size"] == [32, 32]
    assert (loaded.predictor.depth, loaded.predictor.predictor_embed_dim) == (1, 96)


def test_heads_for_a_width_without_preset_and_override(tmp_path):
    model = build_ijepa(**{**TINY, "embed_dim": 128, "num_heads": 4})
    path = released_file(tmp_path / "odd.pth.tar", model, released_style_optimizer(model))
    assert load_official(path).encoder.num_heads == 2  # 128 / 64: the fallback rule
    loaded = load_official(path, num_heads=4)
    assert loaded.encoder.num_heads == 4 and loaded.predictor.num_heads == 4
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.target_encoder(x), model.target_encoder.eval()(x), atol=1e-6)


def test_resume_continues_exactly_like_the_uninterrupted_run(trained):
    model, optimizer, batch, path = trained
    state = official_to_training_state(path)
    assert state["epoch"] == 3 and state["license"] == "CC-BY-NC-4.0" and "step" not in state
    assert all(k.startswith("module.") for k in state["encoder"])

    resumed = build_ijepa(**state["config"]["model"])
    resumed.encoder.load_state_dict({k[7:]: v for k, v in state["encoder"].items()})
    resumed.predictor.load_state_dict({k[7:]: v for k, v in state["predictor"].items()})
    resumed.target_encoder.load_state_dict({k[7:]: v for k, v in state["target_encoder"].items()})
    new_optimizer = make_optimizer(resumed)  # openjepa's own groups must line up with the released ones
    load_optimizer_state(new_optimizer, state["opt"])
    assert all(s["step"].item() == 2 for s in new_optimizer.state_dict()["state"].values())

    reference = [step(model, optimizer, batch) for _ in range(2)]
    continued = [step(resumed, new_optimizer, batch) for _ in range(2)]
    assert continued == pytest.approx(reference, abs=1e-6)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_resume_rejects_an_optimizer_state_of_another_model(trained, tmp_path):
    model, optimizer, _, _ = trained
    other = build_ijepa(**{**TINY, "depth": 1})
    state = torch.load(released_file(tmp_path / "a.pth.tar", model, optimizer), weights_only=True)
    state["opt"] = released_style_optimizer(other).state_dict()
    with pytest.raises(CheckpointError, match="encoder \\(weight decay\\) group"):
        official_to_training_state(state)
    state["opt"]["param_groups"] = state["opt"]["param_groups"][:2]
    with pytest.raises(CheckpointError, match="2 parameter groups"):
        official_to_training_state(state)


def test_another_resolution_resamples_position_embeddings(trained):
    model, _, _, path = trained
    loaded = load_official(path, img_size=32)
    assert loaded.encoder.grid_size == (8, 8) and loaded.predictor.grid_size == (8, 8)
    expected = resample_pos_embed(model.target_encoder.pos_embed, (8, 8), (4, 4))
    assert torch.equal(loaded.target_encoder.pos_embed, expected)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # our encoder resamples the same way on the fly, so the outputs agree
        assert torch.allclose(loaded.target_encoder(x), model.target_encoder(x), atol=1e-5)
    # The model trains at the new size, and the optimizer state still fits.
    state = official_to_training_state(path, img_size=32)
    assert state["config"]["model"]["img_size"] == 32
    optimizer = make_optimizer(loaded)
    load_optimizer_state(optimizer, state["opt"])
    assert torch.isfinite(torch.tensor(step(loaded, optimizer, fixed_batch(loaded, size=32))))
    with pytest.raises(Exception, match="multiple of the patch size 4"):
        load_official(path, img_size=30)


def test_one_encoder_without_predictor(trained, tmp_path):
    model, _, _, path = trained
    state = torch.load(path, weights_only=True)
    only = {"target_encoder": state["target_encoder"], "epoch": 3}
    torch.save(only, tmp_path / "encoder-only.pth.tar")
    encoder = load_official_encoder(tmp_path / "encoder-only.pth.tar")
    assert_same_weights(encoder, model.target_encoder)
    with pytest.raises(CheckpointError, match="no 'predictor' weights"):
        with pytest.warns(UserWarning, match="no 'encoder'"):
            load_official(tmp_path / "encoder-only.pth.tar")
    context = load_official_encoder(path, which="context")
    assert_same_weights(context, model.encoder)


def test_models_to_be_loaded_skip_initialisation_when_their_constructor_allows():
    from torch import nn

    from openjepa.checkpoint import load_strict
    from openjepa.pretrained import build_for_loading

    linear = build_for_loading(lambda: nn.Linear(4, 3))  # nothing reads tensor values: built on meta, no init
    assert linear.weight.is_meta
    load_strict(linear, {"weight": torch.ones(3, 4), "bias": torch.zeros(3)}, "test", "memory", assign=True)
    assert torch.equal(linear(torch.ones(1, 4)), torch.full((1, 3), 4.0))

    class ReadsValues(nn.Linear):
        def __init__(self):
            super().__init__(4, 3)
            self.scale = float(self.weight.detach().abs().max())  # impossible on meta: built normally instead

    assert not build_for_loading(ReadsValues).weight.is_meta


def test_cli_convert_official(trained, tmp_path, capsys):
    model, _, _, path = trained
    out = tmp_path / "converted"
    assert main(["convert", "official", str(path), "--out", str(out)]) == 0
    assert "width 192, depth 2, 3 heads, patch 4" in capsys.readouterr().out
    assert_same_weights(load_exported(out), model.target_encoder)
    info = read_export_info(out)
    assert info.license == "CC-BY-NC-4.0" and info.source == "official"
    assert info.mean == [0.485, 0.456, 0.406] and info.std == [0.229, 0.224, 0.225]
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"] == "target" and config["architecture"]["num_heads"] == 3
