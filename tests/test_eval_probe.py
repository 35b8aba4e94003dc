"""Linear probe: recovers linear structure, fails on noise, never looks at the test set, deterministic."""

import json

import pytest
import torch

from openjepa.cli.main import main
from openjepa.eval import Features, linear_probe, save_features, stratified_split
from openjepa.eval.accuracy import topk_hits


def separable(n: int, classes: int = 4, dim: int = 16, seed: int = 0, noise: float = 0.5):
    """Gaussian clusters around well-separated class means (linearly separable with high probability)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(n) % classes
    x = centres[y] + noise * torch.randn(n, dim, generator=g)
    return Features(x, y)


FEW = (1e-4, 1e-2, 1.0)  # a short sweep where the number of candidates is not what a test is about


def shuffled(features: Features, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(features.x, features.y[torch.randperm(len(features), generator=g)])


def test_probe_recovers_a_linear_labelling():
    result = linear_probe(separable(400), separable(200, seed=1))
    assert result.top1 > 0.95
    assert result.top5 is None  # 4 classes: top-5 would be trivially 1
    assert result.n_train == 400 and result.n_test == 200 and result.num_classes == 4
    assert result.weight_decay in result.sweep and len(result.sweep) == 7


def test_probe_is_at_chance_on_shuffled_labels():
    train, test = separable(400, classes=10, dim=32), separable(300, classes=10, dim=32, seed=1)
    result = linear_probe(shuffled(train, 0), shuffled(test, 1), FEW)
    assert result.top1 < 0.2  # chance is 0.1; 3 standard errors above it is 0.15
    assert result.top5 is not None and result.top5 < 0.7  # chance 0.5


def test_selection_never_sees_the_test_set():
    train, test = separable(300, noise=5.0), separable(200, seed=1, noise=5.0)
    a = linear_probe(train, test, FEW)
    b = linear_probe(train, shuffled(test, 5), FEW)
    c = linear_probe(train, Features(torch.randn(200, 16) * 100, test.y), FEW)  # nor do the test features
    assert a.sweep == b.sweep == c.sweep and a.weight_decay == b.weight_decay == c.weight_decay
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert torch.equal(a.classifier.weight, c.classifier.weight)
    assert a.top1 != b.top1


def test_selection_changes_with_the_training_data_only():
    # the held-out split is part of the training set: another seed holds out other samples
    train, test = separable(300, noise=5.0), separable(20, seed=1, noise=5.0)
    sweeps = {tuple(linear_probe(train, test, FEW, seed=s).sweep.values()) for s in range(2)}
    assert len(sweeps) > 1


def test_probe_is_deterministic_and_keeps_label_values():
    train, test = separable(200), separable(100, seed=1)
    train = Features(train.x, train.y * 10 + 3)  # labels 3, 13, 23, 33
    test = Features(test.x, test.y * 10 + 3)
    a, b = linear_probe(train, test, FEW), linear_probe(train, test, FEW)
    assert a.top1 == b.top1 and torch.equal(a.classifier.weight, b.classifier.weight)
    assert set(a.classifier.predict(test.x).tolist()) <= {3, 13, 23, 33}
    assert (a.classifier.predict(test.x) == test.y).float().mean().item() == pytest.approx(a.top1)


def test_test_labels_unseen_in_training_count_as_errors():
    train, test = separable(200), separable(100, seed=1)
    relabelled = Features(test.x, torch.where(test.y == 0, torch.tensor(99), test.y))
    result = linear_probe(train, relabelled, FEW)
    assert result.top1 <= 0.75 + 1e-6  # a quarter of the test set has a class the probe cannot output


def test_chosen_weight_decay_is_the_best_on_the_held_out_split():
    train, test = separable(200, noise=5.0), separable(50, seed=1, noise=5.0)
    result = linear_probe(train, test, holdout=0.2)
    assert result.sweep[result.weight_decay] == max(result.sweep.values())
    only = linear_probe(train, test, weight_decays=[3e-3])
    assert only.weight_decay == 3e-3 and list(only.sweep) == [3e-3]


def test_topk_semantics():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.0, 0.3, 0.9, 0.05],
                           [0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 3])
    assert topk_hits(scores, targets, 1).tolist() == [False, False]
    assert topk_hits(scores, targets, 5).tolist() == [True, True]  # ties at 0 may count for a probe ...
    assert topk_hits(scores, targets, 5, positive_only=True).tolist() == [True, False]  # ... never for k-NN votes
    assert topk_hits(scores, torch.tensor([-1, -1]), 7).tolist() == [False, False]


def test_stratified_split_holds_out_every_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    fit, held = stratified_split(y, 0.1, seed=0)
    assert len(held) == 10 and len(fit) == 90 and set(fit.tolist()).isdisjoint(held.tolist())
    assert torch.bincount(y[held]).tolist() == [5, 3, 2]
    assert torch.equal(held, stratified_split(y, 0.1, seed=0)[1])
    assert not torch.equal(held, stratified_split(y, 0.1, seed=1)[1])


def test_probe_rejects_unlabelled_or_mismatched_features():
    with pytest.raises(ValueError, match="labelled"):
        linear_probe(Features(torch.randn(10, 4), torch.full((10,), -1)), separable(10, dim=4))
    with pytest.raises(ValueError, match="dimensions"):
        linear_probe(separable(10, dim=4), separable(10, dim=5))


def test_eval_linear_cli_on_saved_features(tmp_path, capsys):
    train, test = separable(300, classes=8), separable(100, classes=8, seed=1)
    train.meta, test.meta = {"pool": "mean", "which": "target"}, {"pool": "mean", "which": "target"}
    save_features(train, tmp_path / "feats_train.npz")
    save_features(test, tmp_path / "feats_test.safetensors")
    code = main(["eval", "linear", "--features-train", str(tmp_path / "feats_train.npz"),
                 "--features-test", str(tmp_path / "feats_test.safetensors"), "--weight-decays", "1e-4", "1e-2",
                 "--holdout", "0.2"])
    assert code == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("linear probe top-1 ") and " top-5 " in line
    assert "chosen on 20% of train; 300 train / 100 test, target encoder, mean pool)" in line
    record = json.loads((tmp_path / "feats_train.linear.json").read_text())  # default: next to the features
    assert record["method"] == "linear" and record["top1"] > 0.95 and record["line"] == line
    assert set(record["sweep"]) == {"0.0001", "0.01"} and record["n_train"] == 300


def test_eval_cli_needs_one_source_of_features(tmp_path, capsys):
    assert main(["eval", "linear"]) == 1
    assert "either --checkpoint, or both --features-train and --features-test" in capsys.readouterr().err
    assert main(["eval", "knn", "--features-train", str(tmp_path / "a.npz")]) == 1
    assert "give both" in capsys.readouterr().err
