import math

import pytest
import torch

from openjepa.models import PRESETS, VisionTransformer, resample_pos_embed, sincos_2d, vit_encoder
from openjepa.models.vit import preset_name


def _reference_sincos(dim, grid):
    """The released numpy formula, written out independently (float64, column half first)."""
    import numpy as np

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=float), np.arange(grid, dtype=float))
    return torch.from_numpy(np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)).float()


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_shapes_and_backward(name):
    arch = PRESETS[name]
    # Full width, two blocks: checks the preset's width/heads/MLP ratio without the cost of full depth.
    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=arch.embed_dim, depth=2,
                              num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 4, arch.embed_dim)
    out.square().mean().backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.pos_embed.grad is None  # fixed, not learned
    assert model.blocks[0].mlp.fc1.out_features == int(arch.embed_dim * arch.mlp_ratio)


def test_preset_depths_and_names():
    assert [PRESETS[n].depth for n in PRESETS] == [12, 12, 12, 24, 32, 40]
    assert preset_name("small") == preset_name("ViT-S") == "vit_small"
    with pytest.raises(ValueError, match="unknown ViT preset"):
        preset_name("vit_enormous")


@pytest.mark.parametrize("patch", [14, 16])
def test_patch_sizes_any_image_size(patch):
    model = vit_encoder("vit_tiny", patch_size=patch, img_size=(patch * 3, patch * 5), depth=1)
    assert model.grid_size == (3, 5)
    assert model(torch.randn(1, 3, patch * 3, patch * 5)).shape == (1, 15, 192)


def test_official_parameter_names():
    model = vit_encoder("vit_tiny", patch_size=16, img_size=32, depth=2)
    names = set(model.state_dict())
    expected = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(2):
        for leaf in ["norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]:
            expected |= {f"blocks.{i}.{leaf}.weight", f"blocks.{i}.{leaf}.bias"}
    assert names == expected


def test_sincos_matches_released_formula():
    assert torch.allclose(sincos_2d(64, 7), _reference_sincos(64, 7), atol=1e-6)
    model = vit_encoder("vit_tiny", patch_size=4, img_size=28, depth=1)
    assert torch.equal(model.pos_embed[0], sincos_2d(192, 7))


def test_layernorm_eps_and_grey_input():
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 16, 32)
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(2, 3, 16, 16))


def test_masks_keep_given_patches():
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=0, num_heads=2)
    x = torch.randn(2, 3, 16, 16)
    idx = torch.tensor([[0, 5, 15], [3, 4, 9]])
    tokens = model.patch_embed(x) + model.pos_embed
    kept = model.prepare_tokens(x, idx)
    assert torch.allclose(kept[1], tokens[1, [3, 4, 9]])
    # [M, B, K] masks give block-major [M*B, K, D]; a list of [B, K] (the released API) is the same.
    both = model.prepare_tokens(x, torch.stack([idx, idx.flip(1)]))
    assert both.shape == (4, 3, 32) and torch.allclose(both[3], tokens[1, [9, 4, 3]])
    assert torch.equal(model.prepare_tokens(x, [idx, idx.flip(1)]), both)


def test_init_rescaling_stays_in_effect():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    first = model.blocks[0].attn.proj.weight.std().item()
    last = model.blocks[-1].mlp.fc2.weight.std().item()
    qkv = model.blocks[-1].attn.qkv.weight
    # the released init: a normal of std 0.02 "truncated" at +-2 in absolute value, i.e. not truncated at all
    # (a +-2 sigma truncation would give std 0.02 x 0.880 and no weight beyond 0.04)
    assert abs(qkv.std().item() - 0.02) < 5e-4 and qkv.abs().max() > 0.04
    assert abs(first / 0.02 - 1 / math.sqrt(2)) < 0.03
    assert abs(last / 0.02 - 1 / math.sqrt(24)) < 0.03
    assert torch.all(model.blocks[3].attn.qkv.bias == 0)


def test_pos_embed_resampling():
    pe = sincos_2d(32, (4, 4))[None]
    same = resample_pos_embed(pe, (4, 4))
    assert same is pe
    up = resample_pos_embed(pe, (8, 6))
    assert up.shape == (1, 48, 32)
    # A constant-over-rows embedding stays constant over rows after resampling (no CLS token mixed in).
    flat = torch.arange(4.0).repeat(4).reshape(1, 16, 1).expand(1, 16, 4).contiguous()
    out = resample_pos_embed(flat, (2, 4), (4, 4)).reshape(2, 4, 4)
    assert torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(torch.zeros(1, 12, 4), (2, 2))


def test_other_resolution_runs_with_resampled_pos_embed():
    model = vit_encoder("vit_tiny", patch_size=8, img_size=32, depth=1)
    out = model(torch.randn(1, 3, 48, 64))
    assert out.shape == (1, 48, 192)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_intermediate_layers_and_features():
    model = vit_encoder("vit_tiny", patch_size=8, img_size=32, depth=4)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    layers = model.get_intermediate_layers(x, n=4)
    assert len(layers) == 4 and all(t.shape == (2, 16, 192) for t in layers)
    assert torch.allclose(layers[-1], model.forward_features(x), atol=1e-6)
    final, maps = model.forward_intermediates(x, indices=[1, 3])
    assert final.shape == (2, 16, 192) and [m.shape for m in maps] == [(2, 192, 4, 4)] * 2


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = vit_encoder("vit_tiny", patch_size=8, img_size=32, depth=2)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert torch.allclose(ref, model.blocks[0].attn.qkv.weight.grad, atol=1e-5)


@pytest.mark.parametrize("patch_size,in_chans", [(2, 1), (4, 1), (16, 3)])
def test_patch_embed_gain_sets_the_patch_embedding_scale_whatever_the_patch(patch_size, in_chans):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=patch_size * 8, patch_size=patch_size, in_chans=in_chans, embed_dim=192,
                            depth=1, num_heads=3, patch_embed_gain=0.55)
    pixels = torch.randn(64, in_chans, patch_size * 8, patch_size * 8)
    std = vit.patch_embed(pixels).std().item()
    assert 0.45 < std < 0.6  # trunc-normal at 2 std: a little under the gain
    paper = VisionTransformer(img_size=patch_size * 8, patch_size=patch_size, in_chans=in_chans, embed_dim=192,
                              depth=1, num_heads=3)
    assert paper.patch_embed(pixels).std().item() == pytest.approx(0.02 * (in_chans * patch_size**2) ** 0.5, rel=0.2)


def test_random_init_baseline_keeps_the_patch_embed_gain():
    from openjepa.eval import random_init_like

    vit = VisionTransformer(img_size=16, patch_size=2, in_chans=1, embed_dim=192, depth=1, num_heads=3,
                            patch_embed_gain=0.55)
    fresh = random_init_like(vit, seed=1)
    assert fresh.patch_embed_gain == 0.55
    assert fresh.patch_embed.proj.weight.std().item() == pytest.approx(vit.patch_embed.proj.weight.std().item(),
                                                                         rel=0.2)
