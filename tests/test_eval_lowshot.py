"""Low-shot evaluation: stratified, seeded labelled subsets of the training set; mean and std over draws; the test
split is never subsampled or used to choose anything."""

import json
import statistics
from types import SimpleNamespace

import pytest
import torch

from openjepa.cli.main import main
from openjepa.errors import UserError
from openjepa.eval import Features, LowShot, low_shot_knn, low_shot_linear, low_shot_subset, over_draws, save_features


def imbalanced_labels():
    """Classes 3, 7 and 9 of sizes 50, 120 and 31, in a scrambled order."""
    y = torch.cat([torch.full((50,), 3), torch.full((120,), 7), torch.full((31,), 9)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]


def clusters(n, classes=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(n) % classes
    return Features(centres[y] + 0.7 * torch.randn(n, dim, generator=g), y)


def test_labels_per_class_keeps_exactly_n_of_every_class():
    y = imbalanced_labels()
    idx = low_shot_subset(y, labels_per_class=6, seed=0)
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == len(idx)
    assert {c: int((y[idx] == c).sum()) for c in (3, 7, 9)} == {3: 6, 7: 6, 9: 6}


def test_label_fraction_keeps_that_share_of_every_class_and_at_least_one():
    y = imbalanced_labels()
    idx = low_shot_subset(y, fraction=0.1, seed=0)
    assert {c: int((y[idx] == c).sum()) for c in (3, 7, 9)} == {3: 5, 7: 12, 9: 3}
    tiny = low_shot_subset(y, fraction=0.001, seed=0)
    assert sorted(y[tiny].tolist()) == [3, 7, 9]  # round(0.05) would be 0: every class keeps one


def test_draws_are_reproducible_and_differ_from_each_other():
    y = imbalanced_labels()
    spec = LowShot(labels_per_class=4, draws=3, seed=11)
    first = [spec.indices(y, k) for k in range(3)]
    again = [LowShot(labels_per_class=4, draws=3, seed=11).indices(y, k) for k in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert spec.seeds == [11, 12, 13]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert torch.equal(first[1], low_shot_subset(y, labels_per_class=4, seed=12))  # draw k is seed + k


def test_bad_requests_are_user_errors():
    y = imbalanced_labels()
    with pytest.raises(UserError, match="class 9 has 31"):
        low_shot_subset(y, labels_per_class=40)
    with pytest.raises(UserError, match="no label"):
        low_shot_subset(torch.tensor([0, 1, -1, 1]), labels_per_class=1)
    with pytest.raises(UserError, match="not both"):
        LowShot(labels_per_class=3, fraction=0.1)
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        LowShot(fraction=1.5)
    with pytest.raises(UserError, match="draws"):
        LowShot(labels_per_class=3, draws=0)


def test_mean_and_std_over_draws():
    scores = iter([0.5, 0.7, 0.6])
    result = over_draws(torch.arange(40) % 4, LowShot(labels_per_class=2, draws=3),
                        lambda idx, seed: SimpleNamespace(top1=next(scores), top5=None, n_test=9,
                                                          to_dict=lambda: {}), "linear")
    assert result.top1 == pytest.approx(0.6) and result.top1_std == pytest.approx(statistics.stdev([.5, .7, .6]))
    assert result.top5 is None and [d.seed for d in result.draws] == [0, 1, 2]
    assert result.line().startswith("linear probe top-1 0.600 +- 0.100 (3 draws of 2 labels per class, 8 train")


def test_low_shot_probe_and_knn_use_the_whole_test_split_and_choose_nothing_on_it():
    train, test = clusters(400), clusters(120, seed=1)
    spec = LowShot(labels_per_class=5, draws=2, seed=3)
    a = low_shot_linear(train, test, spec, weight_decays=(1e-3, 1e-1))
    scrambled = Features(test.x, test.y[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))])
    b = low_shot_linear(train, scrambled, spec, weight_decays=(1e-3, 1e-1))
    for da, db in zip(a.draws, b.draws):
        assert da.indices == db.indices and da.result.weight_decay == db.result.weight_decay
        assert da.result.n_test == len(test) and da.result.n_train == 20
        assert max(da.indices) < len(train)
    assert a.top1 > 0.8 and b.top1 < 0.5  # learnt from 5 labels per class; scored on (scrambled) test labels
    knn = low_shot_knn(train, test, spec, k=3)
    assert [d.indices for d in knn.draws] == [d.indices for d in a.draws] and knn.top1 > 0.8


def test_cli_low_shot_records_seeds_and_indices(tmp_path, capsys):
    train, test = clusters(200), clusters(80, seed=1)
    save_features(train, tmp_path / "train.npz")
    save_features(test, tmp_path / "test.npz")
    code = main(["eval", "linear", "--features-train", str(tmp_path / "train.npz"), "--features-test",
                 str(tmp_path / "test.npz"), "--label-fraction", "0.05", "--draws", "2", "--draw-seed", "7",
                 "--weight-decays", "1e-2"])
    out = capsys.readouterr().out
    assert code == 0 and "(2 draws of 5% of the labels, 12 train / 80 test" in out
    record = json.loads((tmp_path / "train.linear.5pct.json").read_text())
    assert record["low_shot"] == {"labels_per_class": None, "fraction": 0.05, "draws": 2, "seed": 7}
    assert [d["seed"] for d in record["draws"]] == [7, 8]
    for draw in record["draws"]:
        chosen = torch.tensor(draw["indices"])
        assert torch.equal(torch.bincount(train.y[chosen]), torch.full((4,), 3))
    assert record["top1"] == pytest.approx(statistics.fmean(d["top1"] for d in record["draws"]))
    assert main(["eval", "knn", "--features-train", str(tmp_path / "train.npz"), "--features-test",
                 str(tmp_path / "test.npz"), "--draws", "3"]) == 1
    assert "--draws and --draw-seed go with" in capsys.readouterr().err
