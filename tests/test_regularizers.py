"""The anti-collapse regularisers (openjepa.regularizers): values on known inputs, the position centring, and
that the default model's loss is the paper's."""

import pytest
import torch

from openjepa import build_ijepa
from openjepa.ijepa import ModelConfig
from openjepa.masks import MultiBlockMaskSampler
from openjepa.regularizers import Regularizer, epps_pulley, position_centred, sigreg, vicreg, vicreg_terms


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def collapsed(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Every row the same direction, up to a little noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g) * torch.ones(1, d) + 0.01 * torch.randn(n, d, generator=g)


def test_epps_pulley_is_small_for_standard_normal_samples_and_large_otherwise():
    x = gaussian(2048, 64)
    stat = epps_pulley(x)
    assert stat.shape == (64,)
    # Under the null the statistic is O(1) whatever N; off the null it grows with N.
    assert stat.mean() < 2.0
    assert epps_pulley(x * 3).mean() > 50 * stat.mean()  # wrong scale
    assert epps_pulley(x + 1).mean() > 50 * stat.mean()  # wrong mean
    assert epps_pulley(torch.zeros(2048, 4)).mean() > 100  # a point mass


def test_sigreg_tells_isotropic_from_collapsed_embeddings():
    g = torch.Generator().manual_seed(1)
    iso = sigreg(gaussian(1024, 96), 128, g)
    flat = sigreg(collapsed(1024, 96), 128, torch.Generator().manual_seed(1))
    assert iso < 2.0
    assert flat > 20 * iso


def test_vicreg_is_near_zero_for_whitened_data_and_large_for_collapsed():
    iso_var, iso_cov = vicreg_terms(gaussian(8192, 32))
    assert iso_var < 0.01  # every dimension has std ~1
    assert iso_cov < 0.01  # off-diagonal covariances ~ 1/sqrt(N)
    var, cov = vicreg_terms(collapsed(8192, 32))
    assert cov > 10  # all dimensions perfectly correlated: (D - 1) * var^2 per row, summed / D
    var_small, _ = vicreg_terms(0.1 * gaussian(8192, 32))
    assert var_small == pytest.approx(0.9, abs=0.01)  # hinge: 1 - std with std 0.1
    assert vicreg(collapsed(8192, 32)) > 100 * vicreg(gaussian(8192, 32))


def test_regularisers_give_finite_gradients_even_for_constant_embeddings():
    for fn in (vicreg, lambda z: sigreg(z, 16, torch.Generator().manual_seed(0))):
        z = torch.zeros(16, 8, requires_grad=True)
        fn(z).backward()
        assert torch.isfinite(z.grad).all()


def test_position_centring_removes_what_every_image_shares_at_a_position():
    g = torch.Generator().manual_seed(0)
    batch, keep, positions, dim = 6, 5, 9, 4
    idx = torch.stack([torch.randperm(positions, generator=g)[:keep].sort().values for _ in range(batch)])
    content = torch.randn(batch, keep, dim, generator=g)
    offsets = 10 * torch.randn(positions, dim, generator=g)  # a large position-only component
    centred = position_centred(content + offsets[idx], idx, positions)
    assert torch.allclose(centred, position_centred(content, idx, positions), atol=1e-4)
    # at every position the centred rows of the images that have it sum to zero
    flat_idx = idx.reshape(-1)
    for p in flat_idx.unique():
        assert torch.allclose(centred[flat_idx == p].sum(0), torch.zeros(dim), atol=1e-4)


@pytest.mark.parametrize("bad", [{"kind": "l2"}, {"on": "tokens"}, {"weight": -1.0}, {"num_slices": 0}])
def test_regularizer_settings_are_checked(bad):
    with pytest.raises(ValueError):
        Regularizer(**{"kind": "vicreg", **bad})


@pytest.mark.parametrize("key, value", [("regularizer", "l2"), ("regularizer_on", "everything")])
def test_model_config_names_the_bad_regularizer_setting(key, value):
    with pytest.raises(ValueError, match=f"model.{key}"):
        ModelConfig(**{key: value})


def _tiny(**overrides):
    torch.manual_seed(0)
    model = build_ijepa(arch="vit_tiny", depth=2, embed_dim=48, num_heads=3, patch_size=4, img_size=16,
                        in_chans=1, pred_depth=1, pred_emb_dim=24, **overrides)
    masks = MultiBlockMaskSampler(model.encoder.grid_size, min_keep=2).sample(8, torch.Generator().manual_seed(0))
    images = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, images, masks


def test_the_default_model_loss_is_the_papers():
    model, images, masks = _tiny()
    assert not model.regularizer.active
    targets, _ = model.compute_targets(images, masks.targets, pooled=False)
    expected = model.criterion(model.predict(images, masks.context, masks.targets), targets)
    assert torch.equal(model(images, masks.context, masks.targets), expected)


@pytest.mark.parametrize("on", ["pooled", "content", "pooled+content"])
def test_a_regularised_loss_adds_exactly_the_weighted_term(on):
    model, images, masks = _tiny(regularizer="vicreg", regularizer_weight=0.5, regularizer_on=on)
    plain, _, _ = _tiny()
    plain.load_state_dict(model.state_dict())
    z = model.encoder(images, masks.context)
    parts = model.regularizer.embeddings(z, masks.context, model.encoder.patch_embed.num_patches)
    assert len(parts) == on.count("+") + 1
    term = 0.5 * sum(vicreg(p) for p in parts)
    loss = model(images, masks.context, masks.targets)
    assert torch.allclose(loss, plain(images, masks.context, masks.targets) + term, atol=1e-6)
    loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
