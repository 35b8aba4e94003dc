"""Weighted k-NN: the DINO formula exactly, chunking, clustered vs shuffled data, top-5 semantics."""

import json

import pytest
import torch
import torch.nn.functional as F

from openjepa.cli.main import main
from openjepa.eval import Features, knn_classify
from test_eval_features import write_checkpoint


def clustered(n: int, classes: int = 10, dim: int = 32, seed: int = 0, spread: float = 0.3) -> Features:
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return Features(centres[y] + spread * torch.randn(n, dim, generator=g), y)


def reference_knn(train: Features, test: Features, k: int, t: float, classes: int) -> torch.Tensor:
    """Votes written out sample by sample: sum over the k most similar of exp(cos / T) per class."""
    a, b = F.normalize(train.x, dim=1), F.normalize(test.x, dim=1)
    votes = torch.zeros(len(test), classes, dtype=torch.float64)
    for i in range(len(test)):
        sims = (a @ b[i]).double()
        for j in sims.argsort(descending=True)[:k].tolist():
            votes[i, train.y[j]] += torch.exp(sims[j] / t)
    return votes


def test_knn_matches_the_written_out_formula_and_chunking_changes_nothing():
    train, test = clustered(120, classes=6, spread=4.0), clustered(40, classes=6, seed=1, spread=4.0)
    votes = reference_knn(train, test, k=7, t=0.1, classes=6)
    expected_top1 = (votes.argmax(1) == test.y).double().mean().item()
    top5 = votes.topk(5, dim=1)
    expected_top5 = ((top5.indices == test.y[:, None]) & (top5.values > 0)).any(1).double().mean().item()
    for chunk in (None, 1, 7):
        result = knn_classify(train, test, k=7, temperature=0.1, chunk_size=chunk)
        assert result.top1 == pytest.approx(expected_top1) and result.top5 == pytest.approx(expected_top5)
    assert 0.3 < expected_top1 < 0.9 and expected_top5 > expected_top1  # the case is not trivial


def test_knn_on_clusters_and_on_shuffled_labels():
    train, test = clustered(500), clustered(300, seed=1)
    assert knn_classify(train, test).top1 > 0.95
    g = torch.Generator().manual_seed(0)
    noise = Features(train.x, train.y[torch.randperm(len(train), generator=g)])
    result = knn_classify(noise, test)
    assert result.top1 < 0.2  # chance is 0.1
    assert result.top5 < 0.7  # chance is 0.5


def test_top5_never_counts_classes_without_votes():
    train, test = clustered(200, spread=2.0), clustered(100, seed=1, spread=2.0)
    one = knn_classify(train, test, k=1)
    assert one.top5 == one.top1  # one neighbour votes for one class: top-5 can add nothing
    assert knn_classify(train, test, k=20).top5 >= knn_classify(train, test, k=20).top1
    few = knn_classify(clustered(40, classes=4), clustered(20, classes=4, seed=1))
    assert few.top5 is None  # top-5 among 4 classes would always be 1


def test_knn_details():
    train, test = clustered(30, classes=3), clustered(12, classes=3, seed=1)
    big_k = knn_classify(train, test, k=1000)
    assert big_k.k == 30  # k is capped at the training-set size
    unseen = Features(test.x, torch.full((12,), 7))
    assert knn_classify(train, unseen).top1 == 0.0  # a class absent from training is always wrong
    scaled = Features(test.x * 50, test.y)  # cosine similarity ignores feature norms
    assert knn_classify(train, scaled).top1 == knn_classify(train, test).top1
    with pytest.raises(ValueError, match="labelled"):
        knn_classify(train, Features(test.x, torch.full((12,), -1)))


def test_eval_knn_cli_from_a_checkpoint(tmp_path, capsys):
    write_checkpoint(tmp_path / "run" / "jepa-latest.pth.tar")
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "run"), "--k", "5", "--device", "cpu",
                 "--out", str(out), "--batch-size", "512"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("k-NN top-1 ")
    assert line.endswith("(k=5, T=0.07; 1347 train / 450 test, target encoder, mean pool)")
    record = json.loads(out.read_text())
    assert record["k"] == 5 and record["num_classes"] == 10 and 0.1 < record["top1"] <= 1
    assert record["train"]["split"] == "train" and record["test"]["split"] == "test"
    assert record["test"]["checkpoint"].endswith("jepa-latest.pth.tar") and record["test"]["step"] == 42
