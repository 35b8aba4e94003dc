"""Where openjepa matches the released I-JEPA code and where it knowingly differs (README, "What you get";
docs/training.md, "Departures from the released code"): each choice pinned by a test that fails if it changes."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa import build_ijepa
from openjepa.config import load_config
from openjepa.data.base import ArrayPicture
from openjepa.data.transforms import TrainTransform, random_resized_crop_box
from openjepa.errors import MaskSamplingError
from openjepa.masks import MaskConfig, MultiBlockMaskSampler
from openjepa.models import vit_encoder

RELEASED = ["in1k_vith14_ep300", "in1k_vith16-448_ep300", "in22k_vith14_ep66", "in22k_vitg16_ep44"]


# -- initialisation: the released trunc_normal_(std=0.02) keeps its default bounds of +-2, i.e. no truncation -------
def test_weights_are_an_untruncated_normal_of_std_002_as_released():
    torch.manual_seed(0)
    encoder = vit_encoder("vit_small", patch_size=16, img_size=224, depth=2)
    w = encoder.blocks[0].attn.qkv.weight.detach().flatten()  # 442k draws; never rescaled by depth
    assert w.std().item() == pytest.approx(0.02, rel=0.01)  # truncation at +-2 std would give 0.0176
    tail = (w.abs() > 2 * 0.02).float().mean().item()
    assert tail == pytest.approx(math.erfc(2 / math.sqrt(2)), abs=0.002)  # 4.55 %, none with a +-2 std cut
    # the residual projections of block i are divided by sqrt(2 i), as released (block 2 here: by 2)
    assert encoder.blocks[1].mlp.fc2.weight.std().item() == pytest.approx(0.01, rel=0.02)


def test_the_mask_token_and_predictor_share_the_released_init():
    torch.manual_seed(0)
    model = build_ijepa(arch="vit_small", patch_size=16, img_size=224, depth=1, pred_depth=1, pred_emb_dim=384)
    w = model.predictor.predictor_blocks[0].mlp.fc1.weight.detach().flatten()
    assert (w.abs() > 2 * 0.02).float().mean().item() == pytest.approx(0.0455, abs=0.003)
    assert model.predictor.mask_token.abs().max().item() > 0.04  # 384 draws: beyond 2 std almost surely


# -- min_keep: openjepa counts the context only and accepts exactly min_keep ----------------------------------------
def _one_target(min_keep: int) -> MultiBlockMaskSampler:
    """4x4 grid, one 2x2 target block, the context block the whole grid: every context holds exactly 12 patches."""
    return MultiBlockMaskSampler((4, 4), MaskConfig(num_targets=1, target_scale=(0.25, 0.25),
                                                    target_aspect_ratio=(1.0, 1.0), context_scale=(1.0, 1.0),
                                                    min_keep=min_keep))


def test_min_keep_is_the_least_context_size_accepted():
    masks = _one_target(12).sample(16, torch.Generator().manual_seed(0))  # the released code needs > 12
    assert masks.context.shape == (16, 12) and masks.targets.shape == (1, 16, 4)
    with pytest.raises(MaskSamplingError, match="could not leave min_keep=13"):
        _one_target(13).sample(16, torch.Generator().manual_seed(0))


def test_min_keep_does_not_apply_to_target_blocks():
    # 4-patch target blocks with min_keep=12: the released sampler would retry such a block forever
    masks = _one_target(12).sample(4, torch.Generator().manual_seed(1))
    assert masks.targets.shape[-1] == 4 < 12


@pytest.mark.parametrize("name", RELEASED)
def test_at_the_released_recipes_grids_min_keep_does_not_bind(name):
    """On the released recipes' patch grids every target block holds more than min_keep + 1 patches (a sweep of
    all scales and aspect ratios), and no context of 19,200 drawn comes near min_keep: the released comparison
    (> min_keep, every block) and openjepa's (>= min_keep, context only) accept the same masks there."""
    cfg = load_config(name)
    grid = cfg.model.img_size // cfg.model.patch_size
    m = cfg.mask
    sampler = MultiBlockMaskSampler((grid, grid), m)
    sweep = np.linspace(0, 1, 101)
    smallest_target = min(
        h * w for h, w in (sampler._block_shape(m.target_scale[0] + s * (m.target_scale[1] - m.target_scale[0]),
                                                m.target_aspect_ratio[0] + a * (m.target_aspect_ratio[1] -
                                                                                m.target_aspect_ratio[0]))
                           for s in sweep for a in sweep))
    assert smallest_target > m.min_keep + 1
    g = torch.Generator().manual_seed(0)
    smallest_context = grid * grid
    for _ in range(300):
        target_shape, context_shape = sampler.draw_shapes(g)
        _, context = sampler._draw_rows(64, target_shape, context_shape, g)
        smallest_context = min(smallest_context, int(context.sum(1).min()))
    assert smallest_context > m.min_keep + 5, smallest_context


# -- training views: bicubic resampling of a sub-pixel box (torchvision: bilinear, whole-pixel box) ------------------
def test_training_views_are_bicubic_resamplings_of_a_sub_pixel_box():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    transform = TrainTransform(16, 1, (0.0,), (1.0,), crop_scale=(0.3, 1.0))
    boxes, views = [], []
    for seed in range(8):
        box = random_resized_crop_box((28, 28), (0.3, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(seed))
        view = transform(ArrayPicture(pixels), torch.Generator().manual_seed(seed))
        boxes.append(box)
        views.append(view)
        expected = Image.fromarray(pixels).resize((16, 16), Image.BICUBIC, box=box)
        assert torch.allclose(view[0], torch.from_numpy(np.asarray(expected) / 255).float(), atol=1e-6)
    assert any(abs(v - round(v)) > 1e-3 for box in boxes for v in box)  # not whole pixels
    # the bilinear whole-pixel crop of the released pipeline differs visibly from what openjepa trains on
    box = tuple(round(v) for v in boxes[0])
    bilinear = Image.fromarray(pixels).crop(box).resize((16, 16), Image.BILINEAR)
    assert np.abs(np.asarray(bilinear) / 255 - views[0][0].numpy()).mean() > 0.01
