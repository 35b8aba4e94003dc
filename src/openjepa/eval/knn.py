"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training samples, and each
neighbour ``i`` votes for its class with weight ``exp(sim_i / T)``. The prediction is the class with the largest
summed weight; top-5 asks whether the true class is among the 5 largest (classes without votes never count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .accuracy import class_index, summary_line, topk_hits
from .features import Features

SIMILARITY_BUDGET = 2**25  # similarity-matrix entries held at once (128 MiB in float32)


@dataclass
class KnnResult:
    top1: float
    top5: float | None  # only with more than 5 classes
    k: int
    temperature: float
    n_train: int
    n_test: int
    num_classes: int

    def line(self, context: str = "") -> str:
        """One-line summary; ``context`` (e.g. ``"target encoder, mean pool"``) goes inside the parentheses."""
        return summary_line("k-NN", self.top1, self.top5, f"k={self.k}, T={self.temperature:g}", self.n_train,
                            self.n_test, context)

    def to_dict(self) -> dict:
        return {"method": "knn", "top1": self.top1, "top5": self.top5, "k": self.k,
                "temperature": self.temperature, "n_train": self.n_train, "n_test": self.n_test,
                "num_classes": self.num_classes}


def knn_votes(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, num_classes: int,
              k: int, temperature: float, chunk_size: int | None = None) -> torch.Tensor:
    """Summed vote weights ``[Q, C]`` (inputs already L2-normalised, ``train_y`` in ``0..C-1``), computed over
    chunks of queries so the similarity matrix never exceeds :data:`SIMILARITY_BUDGET` entries."""
    k = min(k, len(train_x))
    chunk_size = chunk_size or max(1, SIMILARITY_BUDGET // max(1, len(train_x)))
    out = []
    for queries in query_x.split(chunk_size):
        sims, idx = (queries @ train_x.T).topk(k, dim=1)
        # exp((s - s_max) / T): the same ranking of classes as exp(s / T) (a per-row factor), without overflow
        weights = ((sims - sims[:, :1]) / temperature).exp()
        votes = torch.zeros(len(queries), num_classes, device=query_x.device)
        out.append(votes.scatter_add_(1, train_y[idx], weights))
    return torch.cat(out)


def knn_classify(
    train: Features,
    test: Features,
    k: int = 20,
    temperature: float = 0.07,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> KnnResult:
    """Weighted k-NN accuracy of ``test`` against ``train`` (cosine similarity, votes ``exp(sim / T)``)."""
    if not train.has_labels or not test.has_labels:
        raise ValueError("k-NN needs labelled train and test features (labels >= 0)")
    if train.dim != test.dim:
        raise ValueError(f"train features have {train.dim} dimensions but test features {test.dim}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and the temperature > 0, got k={k}, T={temperature}")
    device = torch.device(device or "cpu")
    classes, y_train, y_test = class_index(train.y, test.y)
    train_x = F.normalize(train.x.to(device, torch.float32), dim=1)
    test_x = F.normalize(test.x.to(device, torch.float32), dim=1)
    votes = knn_votes(train_x, y_train.to(device), test_x, len(classes), k, temperature, chunk_size)
    y_test = y_test.to(device)
    top1 = topk_hits(votes, y_test, 1, positive_only=True).float().mean().item()
    top5 = topk_hits(votes, y_test, 5, positive_only=True).float().mean().item() if len(classes) > 5 else None
    return KnnResult(top1, top5, min(k, len(train)), temperature, len(train), len(test), len(classes))
