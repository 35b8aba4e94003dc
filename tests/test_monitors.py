"""Collapse measures, the online monitor used during pretraining, and the end-of-training report."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from openjepa.data import DataConfig, build_eval_dataset

from openjepa.eval import (
    EvalConfig,
    OnlineMonitor,
    check_collapse,
    collapse_warning,
    feature_std,
    final_report,
    rankme,
)
from openjepa.ijepa import ModelConfig
from openjepa.models import VisionTransformer


def test_rankme_of_low_rank_and_isotropic_matrices():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(500, 5, generator=g) @ torch.randn(5, 64, generator=g)
    assert 3.5 < rankme(low) <= 5.01
    iso = torch.randn(2000, 32, generator=g)
    assert rankme(iso) > 0.9 * 32
    assert rankme(torch.ones(10, 8)) == 1.0  # every row the same point


def test_rankme_centring_ignores_a_shared_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g) + 50  # a large mean vector shared by all rows
    assert rankme(x, center=False) < 2  # the paper's uncentred number sees mostly the offset
    assert rankme(x) > 0.9 * 16


def test_feature_std_of_isotropic_and_collapsed_features():
    g = torch.Generator().manual_seed(0)
    assert feature_std(torch.randn(4000, 64, generator=g)) * math.sqrt(64) == pytest.approx(1.0, abs=0.05)
    same = torch.randn(1, 64, generator=g).repeat(100, 1) + 1e-6 * torch.randn(100, 64, generator=g)
    assert feature_std(same) < 1e-5


def test_collapse_warning_fires_on_collapse_only():
    g = torch.Generator().manual_seed(0)
    assert check_collapse(torch.randn(300, 32, generator=g)) is None
    constant = torch.randn(1, 32, generator=g).repeat(300, 1) + 1e-6 * torch.randn(300, 32, generator=g)
    assert "collapse" in check_collapse(constant) and "std" in check_collapse(constant)
    one_direction = torch.randn(300, 1, generator=g) * torch.randn(1, 32, generator=g) + 3.0
    message = check_collapse(one_direction)
    assert message is not None and "rank" in message
    assert collapse_warning(rank=1.5, std=0.2, num_samples=100, dim=64) is not None
    assert collapse_warning(rank=10.0, std=0.2, num_samples=100, dim=64) is None


# -- online monitor ---------------------------------------------------------------------------------------------------
def tiny_vit() -> VisionTransformer:
    # patch_embed_gain as the small-image recipes set it: with the paper's init a 4x4 grey patch barely shows
    # through the position embeddings, and a random encoder's k-NN accuracy here swings from 0.4 to 1.0 with the seed
    return VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2,
                             patch_embed_gain=0.55)


def quadrant_images(n: int, seed: int) -> TensorDataset:
    """Class c lights up quadrant c of the image: easy for any encoder that keeps positions apart."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for c in range(4):
        r, col = divmod(c, 2)
        x[y == c, :, 8 * r:8 * r + 8, 8 * col:8 * col + 8] += 2.0
    return TensorDataset(x, y)


def small_cfg(**kw) -> EvalConfig:
    return EvalConfig(**{"online_train_samples": 120, "online_test_samples": 60, "batch_size": 64, **kw})


@pytest.mark.parametrize("method", ["knn", "linear"])
def test_monitor_scores_without_disturbing_training(method):
    encoder = tiny_vit().train()
    monitor = OnlineMonitor(small_cfg(online_method=method), quadrant_images(300, 0), quadrant_images(200, 1),
                            "cpu")
    assert len(monitor.train) == 120 and len(monitor.test) == 60
    assert torch.bincount(monitor.train.subset.dataset.tensors[1][monitor.train.indices]).tolist() == [30] * 4
    params = [p.detach().clone() for p in encoder.parameters()]
    rng = torch.get_rng_state()
    first = monitor.run(encoder)
    assert torch.equal(torch.get_rng_state(), rng)  # no draw from the global generator
    assert encoder.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(params, encoder.parameters()))
    assert set(first) == {f"{method}_top1", "rankme", "feature_std"}  # 4 classes: no top-5
    assert first[f"{method}_top1"] > 0.9
    assert monitor.run(encoder) == first  # same subsets, same numbers
    assert monitor.describe(first).startswith(f"{method} top-1 ")


def test_monitor_without_labels_reports_rank_and_std_only():
    images_only = TensorDataset(torch.randn(80, 1, 16, 16), torch.full((80,), -1))
    monitor = OnlineMonitor(small_cfg(), None, images_only, "cpu")
    metrics = monitor.run(tiny_vit())
    assert set(metrics) == {"rankme", "feature_std"}
    with pytest.raises(ValueError, match="at least one dataset"):
        OnlineMonitor(small_cfg(), None, None)


def test_monitor_warns_on_a_collapsed_encoder():
    encoder = tiny_vit()
    with torch.no_grad():
        encoder.norm.weight.zero_()  # every output is the norm's bias: one point for every image
        encoder.norm.bias.normal_()
    monitor = OnlineMonitor(small_cfg(), quadrant_images(200, 0), quadrant_images(100, 1), "cpu")
    metrics = monitor.run(encoder)
    assert metrics["feature_std"] < 1e-4
    assert monitor.last_warning is not None and "collapse" in monitor.last_warning
    healthy = OnlineMonitor(small_cfg(), quadrant_images(200, 0), quadrant_images(100, 1), "cpu")
    healthy.run(tiny_vit())
    assert healthy.last_warning is None


def test_final_report_against_random_init():
    train, test = quadrant_images(200, 0), quadrant_images(80, 1)
    cfg = EvalConfig(final_train_samples=120, batch_size=64)
    collapsed = tiny_vit()
    with torch.no_grad():
        collapsed.norm.weight.zero_()
    before = torch.get_rng_state()
    report = final_report(collapsed, None, train, test, cfg, "cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert report.trained.n_train == 120 and report.trained.n_test == 80
    assert report.random.top1 > 0.9 and report.trained.top1 < 0.5  # a constant encoder is at chance
    assert report.random_knn.top1 > 0.75 and report.trained_knn.top1 < 0.5
    linear, knn = report.line().splitlines()
    assert linear.startswith("linear probe top-1:") and "I-JEPA target encoder " in linear
    assert knn.startswith("k-NN top-1 (k=20):") and linear.index("I-JEPA") == knn.index("I-JEPA")  # aligned
    for line in (linear, knn):
        assert "| same architecture at random init" in line and line.endswith(" points)") and "(-" in line
    assert report.to_dict()["random_init"]["top1"] == report.random.top1
    assert report.to_dict()["random_init_knn"]["top1"] == report.random_knn.top1


def test_final_report_without_labels_compares_ranks():
    unlabelled = TensorDataset(torch.randn(40, 1, 16, 16), torch.full((40,), -1))
    report = final_report(tiny_vit(), tiny_vit(), unlabelled, unlabelled, EvalConfig(), "cpu", progress=False)
    assert report.trained is None and "no labels" in report.line() and report.trained_rankme >= 1


def test_monitor_on_openjepa_datasets_uses_stratified_subsets():
    model_cfg = ModelConfig(arch="vit_tiny", img_size=16, patch_size=4, in_chans=1)
    train = build_eval_dataset(DataConfig(), model_cfg, "train")
    test = Subset(build_eval_dataset(DataConfig(), model_cfg, "test"), list(range(0, 450, 2)))
    cfg = small_cfg(online_train_samples=200, online_test_samples=100, online_method="linear")
    monitor = OnlineMonitor(cfg, train, test, "cpu")
    labels = train.source.labels
    picked = np.bincount(labels[monitor.train.indices.numpy()], minlength=10)
    exact = 200 * np.bincount(labels) / len(labels)  # 19.3 to 20.3 per class
    assert picked.sum() == 200 and (np.abs(picked - exact) < 1).all()
    metrics = monitor.run(tiny_vit())
    assert set(metrics) == {"linear_top1", "linear_top5", "rankme", "feature_std"}
    assert metrics["linear_top1"] > 0.5  # digits are easy even for a random encoder; chance is 0.1
