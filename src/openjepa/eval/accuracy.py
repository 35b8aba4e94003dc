"""Accuracy helpers shared by the linear probe and k-NN: labels to class indices, top-k hits."""

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


def summary_line(method: str, top1: float, top5: float | None, settings: str, n_train: int, n_test: int,
                 context: str = "") -> str:
    """``METHOD top-1 0.912 top-5 0.990 (SETTINGS; N train / M test, CONTEXT)``: one result on one line."""
    top5_text = f" top-5 {top5:.3f}" if top5 is not None else ""
    extra = f", {context}" if context else ""
    return f"{method} top-1 {top1:.3f}{top5_text} ({settings}; {n_train} train / {n_test} test{extra})"


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
