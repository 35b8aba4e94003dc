
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from openjepa.data.collate import MaskCollator
from openjepa.data.sampler import SampleKey
from openjepa.masks import (
    MaskConfig,
    MaskSamplingError,
    MultiBlockMaskSampler,
    RandomMaskSampler,
    build_mask_sampler,
)
from openjepa.seeding import seeded_generator


def _draws(sampler, batches, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [sampler.sample(batch_size, g) for _ in range(batches)]


def test_shapes_and_disjoint_context():
    sampler = MultiBlockMaskSampler((14, 14))
    for masks in _draws(sampler, 200, 16):
        ctx, tgt = masks.context, masks.targets
        assert tgt.shape[:2] == (4, 16) and ctx.shape[0] == 16
        assert ctx.shape[1] >= 10  # min_keep
        for b in range(16):
            c = set(ctx[b].tolist())
            assert len(c) == ctx.shape[1]  # no duplicates
            assert not c & set(tgt[:, b].flatten().tolist())
        assert torch.all(ctx[:, 1:] > ctx[:, :-1])  # sorted


def test_target_blocks_are_rectangles_of_the_batch_shape():
    sampler = MultiBlockMaskSampler((10, 12))
    for masks in _draws(sampler, 50, 8):
        rows, cols = masks.targets // 12, masks.targets % 12
        h = int(rows.max(-1).values[0, 0] - rows.min(-1).values[0, 0]) + 1
        w = int(cols.max(-1).values[0, 0] - cols.min(-1).values[0, 0]) + 1
        assert masks.targets.shape[-1] == h * w
        assert torch.all(rows.max(-1).values - rows.min(-1).values == h - 1)
        assert torch.all(cols.max(-1).values - cols.min(-1).values == w - 1)


def test_scale_and_aspect_ratio_ranges_means_and_independence():
    sampler = MultiBlockMaskSampler((64, 64))  # a fine grid keeps rounding effects small
    g = torch.Generator().manual_seed(1)
    shapes = [sampler.draw_shapes(g) for _ in range(3000)]
    t = np.array([s[0] for s in shapes], dtype=float)
    c = np.array([s[1] for s in shapes], dtype=float)
    t_scale, t_aspect = t[:, 0] * t[:, 1] / 4096, t[:, 0] / t[:, 1]
    c_scale, c_aspect = c[:, 0] * c[:, 1] / 4096, c[:, 0] / c[:, 1]
    assert t_scale.min() > 0.15 - 0.01 and t_scale.max() < 0.2 + 0.01
    assert t_aspect.min() > 0.75 - 0.05 and t_aspect.max() < 1.5 + 0.05
    assert abs(t_scale.mean() - 0.175) < 0.003
    assert abs(t_aspect.mean() - 1.125) < 0.02
    assert c_scale.min() > 0.85 - 0.02 and c_scale.max() <= 1.0 and np.all(np.abs(c_aspect - 1) < 0.05)
    # Independent draws: the released sampler used one number for both, making them perfectly correlated.
    assert abs(np.corrcoef(t_scale, t_aspect)[0, 1]) < 0.1


def test_every_patch_can_be_covered_including_last_row_and_column():
    sampler = MultiBlockMaskSampler((7, 9))
    covered_t = torch.zeros(63, dtype=torch.bool)
    covered_c = torch.zeros(63, dtype=torch.bool)
    for masks in _draws(sampler, 300, 8):
        covered_t[masks.targets.flatten()] = True
        covered_c[masks.context.flatten()] = True
    assert covered_t.all() and covered_c.all()


def test_full_grid_blocks_are_allowed():
    sampler = MultiBlockMaskSampler((5, 5), num_targets=1, target_scale=(1.0, 1.0), target_aspect_ratio=(1.0, 1.0),
                                    allow_overlap=True,
                                    min_keep=1)
    masks = sampler.sample(4, torch.Generator().manual_seed(0))
    assert masks.targets.shape == (1, 4, 25) and masks.context.shape == (4, 25)


def test_equalisation_is_an_unbiased_subsample():
    sampler = MultiBlockMaskSampler((4, 4), min_keep=1)
    context = torch.zeros(2, 16, dtype=torch.bool)
    context[0, :12] = True  # 12 patches
    context[1, 4:8] = True  # 4 patches: the batch minimum
    counts = torch.zeros(2, 16)
    trials = 4000
    for i in range(trials):
        kept = sampler._equalise(context, torch.Generator().manual_seed(i))
        assert kept.shape == (2, 4)
        counts.scatter_add_(1, kept, torch.ones_like(kept, dtype=torch.float))
    freq = counts / trials
    # Each of the 12 patches of image 0 is kept with probability 4/12 -- the first ones as often as the last.
    assert torch.allclose(freq[0, :12], torch.full((12,), 1 / 3), atol=0.03)
    assert torch.all(freq[0, 12:] == 0)
    assert torch.all(freq[1, 4:8] == 1)


def test_deterministic_per_seed_and_different_across_seeds():
    sampler = MultiBlockMaskSampler((14, 14))
    a = _draws(sampler, 3, 8, seed=5)
    b = _draws(sampler, 3, 8, seed=5)
    c = _draws(sampler, 3, 8, seed=6)
    for x, y in zip(a, b):
        assert torch.equal(x.context, y.context) and torch.equal(x.targets, y.targets)
    assert any(not torch.equal(x.targets, z.targets) for x, z in zip(a, c))


def test_unsatisfiable_settings_raise_instead_of_looping():
    with pytest.raises(MaskSamplingError, match="min_keep"):
        MultiBlockMaskSampler((3, 3), min_keep=10)
    sampler = MultiBlockMaskSampler((4, 4), min_keep=8, target_scale=(0.5, 0.6), context_scale=(0.9, 1.0))
    with pytest.raises(MaskSamplingError, match="could not leave min_keep=8"):
        sampler.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(MaskSamplingError, match="target_scale"):
        MultiBlockMaskSampler((8, 8), target_scale=(0.3, 0.2))


def test_small_grid_with_paper_settings_works():
    # 7x7 patches: target blocks hold ~7-10 patches, which made the released sampler loop forever with min_keep=10.
    sampler = MultiBlockMaskSampler((7, 7))
    masks = _draws(sampler, 20, 64)
    assert all(m.context.shape[1] >= 10 for m in masks)


class _Images(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.zeros(1, 8, 8), i


def test_workers_get_distinct_streams():
    collate = MaskCollator(MultiBlockMaskSampler((8, 8), min_keep=4), seed=0)
    loader = DataLoader(_Images(), batch_size=8, num_workers=2, collate_fn=collate)
    first_two = [batch.targets for batch, _ in zip(loader, range(2))]  # batch 0 -> worker 0, batch 1 -> worker 1
    assert not torch.equal(first_two[0], first_two[1])


class _Keyed(Dataset):
    """Samples carry SampleKeys as the openjepa loader's do: epoch 0, batches of 8."""

    def __len__(self):
        return 32

    def __getitem__(self, i):
        return torch.zeros(1, 8, 8), i, SampleKey(epoch=0, step=i // 8, position=i % 8, global_batch=8)


@pytest.mark.parametrize("workers", [0, 2])
def test_keyed_masks_do_not_depend_on_workers(workers):
    collate = MaskCollator(MultiBlockMaskSampler((8, 8), min_keep=4), seed=3)
    loader = DataLoader(_Keyed(), batch_size=8, num_workers=workers, collate_fn=collate)
    batches = list(loader)
    expected = [collate.sampler.sample(8, seeded_generator(3, 0, step)) for step in range(4)]
    for got, want in zip(batches, expected):
        assert torch.equal(got.context, want.context) and torch.equal(got.targets, want.targets)
        assert got.images.shape == (8, 1, 8, 8)


def test_keyed_rank_slices_recombine_into_the_global_batch():
    collate = MaskCollator(MultiBlockMaskSampler((8, 8), min_keep=4), seed=0)
    full = collate([(torch.zeros(1), 0, SampleKey(0, 2, p, 8)) for p in range(8)])
    rank0 = collate([(torch.zeros(1), 0, SampleKey(0, 2, p, 8)) for p in range(0, 8, 2)])
    rank1 = collate([(torch.zeros(1), 0, SampleKey(0, 2, p, 8)) for p in range(1, 8, 2)])
    assert torch.equal(full.context[0::2], rank0.context) and torch.equal(full.context[1::2], rank1.context)
    assert torch.equal(full.targets[:, 1::2], rank1.targets)


# -- random masking (the paper's ablation) -----------------------------------------------------------------------
def _random_sampler(**kw):
    return RandomMaskSampler((7, 7), MaskConfig(strategy="random", num_targets=2, min_keep=4, **kw))


def test_random_masks_are_disjoint_distinct_sorted_and_in_range():
    for masks in _draws(_random_sampler(), 100, 16):
        ctx, tgt = masks.context, masks.targets
        assert tgt.shape[:2] == (2, 16) and ctx.shape[0] == 16 and ctx.shape[1] >= 4
        assert int(ctx.min()) >= 0 and int(ctx.max()) < 49 and int(tgt.min()) >= 0 and int(tgt.max()) < 49
        assert torch.all(ctx[:, 1:] > ctx[:, :-1]) and torch.all(tgt[..., 1:] > tgt[..., :-1])
        for b in range(16):
            assert not set(ctx[b].tolist()) & set(tgt[:, b].flatten().tolist())


def test_random_masks_take_their_sizes_from_the_multiblock_draw():
    cfg = MaskConfig(strategy="random", num_targets=2, min_keep=4)
    random, blocks = RandomMaskSampler((7, 7), cfg), MultiBlockMaskSampler((7, 7), cfg)
    for seed in range(30):
        r = random.sample(32, torch.Generator().manual_seed(seed))
        b = blocks.sample(32, torch.Generator().manual_seed(seed))  # the draw the random sampler starts with
        assert r.targets.shape == b.targets.shape
        assert 4 <= r.context.shape[1] <= b.context.shape[1]


def test_random_masks_are_scattered_not_blocks():
    # A 4x4 target block spans 4 rows and 4 columns; 16 random patches of a 16x16 grid almost never fit in that.
    sampler = RandomMaskSampler((16, 16), MaskConfig(strategy="random", num_targets=1, target_scale=(0.0625, 0.0625),
                                                     target_aspect_ratio=(1.0, 1.0)))
    masks = sampler.sample(64, torch.Generator().manual_seed(0))
    rows = masks.targets[0] // 16
    assert masks.targets.shape[-1] == 16
    assert (rows.max(1).values - rows.min(1).values > 3).float().mean() > 0.9


def test_random_masks_cover_the_grid_uniformly():
    counts = torch.zeros(49)
    for masks in _draws(_random_sampler(), 200, 16):
        counts += torch.bincount(masks.targets.flatten(), minlength=49)
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.full((49,), 1 / 49), rtol=0.15)


def test_random_masks_deterministic_per_seed():
    a = _draws(_random_sampler(), 3, 8, seed=5)
    b = _draws(_random_sampler(), 3, 8, seed=5)
    c = _draws(_random_sampler(), 3, 8, seed=6)
    for x, y in zip(a, b):
        assert torch.equal(x.context, y.context) and torch.equal(x.targets, y.targets)
    assert any(not torch.equal(x.targets, z.targets) for x, z in zip(a, c))


def test_random_masks_with_overlap_allowed_may_share_patches():
    sampler = _random_sampler(allow_overlap=True)
    shared = 0
    for masks in _draws(sampler, 20, 16):
        for b in range(16):
            shared += len(set(masks.context[b].tolist()) & set(masks.targets[:, b].flatten().tolist()))
    assert shared > 0


def test_build_mask_sampler_picks_the_strategy_and_rejects_unknown_ones():
    assert isinstance(build_mask_sampler((7, 7), MaskConfig(min_keep=4)), MultiBlockMaskSampler)
    assert isinstance(build_mask_sampler((7, 7), MaskConfig(strategy="random", min_keep=4)), RandomMaskSampler)
    with pytest.raises(MaskSamplingError, match="mask.strategy must be one of"):
        MaskConfig(strategy="blocks")
