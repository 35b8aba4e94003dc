"""Seeded, stratified choices of samples: held-out splits for the probe and fixed subsets for the monitor.

Everything here draws from its own ``torch.Generator``, never from the global one, so evaluating during
training does not change the training run.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, TensorDataset


def class_quotas(counts: torch.Tensor, size: int) -> torch.Tensor:
    """Split ``size`` among classes in proportion to ``counts`` (largest remainders get the leftover units;
    ties go to the larger, then the earlier class)."""
    exact = counts.double() * size / counts.sum()
    quotas = exact.floor().long()
    leftover = size - int(quotas.sum())
    if leftover > 0:
        order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quotas[c]).item(), -int(counts[c]), c))
        quotas[order[:leftover]] += 1
    return quotas


def stratified_subset(labels: torch.Tensor | None, n: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``min(size, n)`` samples (all when ``size`` is None): every class in proportion to its
    frequency, members drawn at random with ``seed``. Without labels: a plain seeded random subset."""
    if size is None or size >= n:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if labels is None:
        return perm[:size].sort().values
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples")
    _, y = torch.unique(labels[perm], return_inverse=True)
    by_class = torch.argsort(y, stable=True)  # classes in turn, each in the random order of perm
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[by_class] = torch.arange(n) - starts[y[by_class]]
    keep = rank < class_quotas(counts, size)[y]
    return perm[keep].sort().values


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, held_out)`` sorted index tensors; ``held_out`` is ``round(fraction * n)`` samples (at least 1),
    stratified like :func:`stratified_subset`."""
    n = len(labels)
    if n < 2:
        raise ValueError(f"need at least 2 training samples to hold some out, got {n}")
    size = min(n - 1, max(1, round(fraction * n)))
    held = stratified_subset(labels, n, size, seed)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().squeeze(1), held


def dataset_labels(dataset: Dataset) -> torch.Tensor | None:
    """The labels of a dataset without loading its images, when it exposes them (``targets``, ``labels``,
    ``source.labels`` as openjepa's datasets do, the second tensor of a TensorDataset, or through a Subset);
    None otherwise."""
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long() if len(dataset.tensors) > 1 else None
    source = getattr(dataset, "source", None)
    for values in (getattr(dataset, "targets", None), getattr(dataset, "labels", None),
                   getattr(source, "labels", None)):
        if values is None or callable(values):
            continue
        try:
            labels = torch.as_tensor(values).long().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            continue
        if len(labels) == len(dataset):  # type: ignore[arg-type]
            return labels
    return None
