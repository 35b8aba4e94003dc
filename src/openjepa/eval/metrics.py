"""Accuracy helpers shared by the linear probe and k-NN."""

from __future__ import annotations

import torch


def class_index(train_labels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map arbitrary integer labels to ``0..C-1`` by the sorted classes of the training set.

    Returns ``(classes [C], train indices, other indices)``; a label that never occurs in training maps to -1,
    which no prediction can match.
    """
    classes, train_idx = torch.unique(train_labels, return_inverse=True)
    pos = torch.searchsorted(classes, labels).clamp(max=len(classes) - 1)
    other_idx = torch.where(classes[pos] == labels, pos, torch.full_like(pos, -1))
    return classes, train_idx, other_idx


def topk_hits(scores: torch.Tensor, targets: torch.Tensor, k: int, positive_only: bool = False) -> torch.Tensor:
    """Per-sample booleans: is the target among the ``k`` highest-scoring classes?

    ``positive_only``: a class whose score is 0 (k-NN: no neighbour voted for it) never counts as a hit, so
    ties among unvoted classes cannot be lucky.
    """
    k = min(k, scores.shape[1])
    values, top = scores.topk(k, dim=1)
    hits = top == targets.unsqueeze(1)
    if positive_only:
        hits &= values > 0
    return hits.any(dim=1)
