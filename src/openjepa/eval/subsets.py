"""Seeded, stratified choices of samples: held-out splits for the probe, fixed subsets for the monitor, and the
labelled subsets of low-shot evaluation (N labels per class, or a fraction of every class).

Everything here draws from its own ``torch.Generator``, never from the global one, so evaluating during
training does not change the training run.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import UserError


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
    counts = torch.bincount(y)
    keep = _rank_in_class(y, counts) < class_quotas(counts, size)[y]
    return perm[keep].sort().values


def _rank_in_class(y: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """For class ids ``y`` (``0..C-1``, in some random order), the position of each sample among the samples of
    its class in that order: keeping ``rank < quota[y]`` keeps the first ``quota[c]`` members of every class."""
    by_class = torch.argsort(y, stable=True)  # classes in turn, each in the given order
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(len(y), dtype=torch.long)
    rank[by_class] = torch.arange(len(y)) - starts[y[by_class]]
    return rank


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


def low_shot_quotas(counts: torch.Tensor, labels_per_class: int | None = None,
                    fraction: float | None = None) -> torch.Tensor:
    """Labelled samples to keep of each class of sizes ``counts``: ``labels_per_class`` of every class, or
    ``max(1, round(fraction * count))`` of each, halves rounded up (every class keeps at least one labelled
    sample)."""
    if (labels_per_class is None) == (fraction is None):
        raise ValueError("give either labels_per_class or fraction")
    counts = torch.as_tensor(counts).long()
    if labels_per_class is not None:
        return torch.full_like(counts, int(labels_per_class))
    return (counts.double() * fraction + 0.5).floor().long().clamp(min=1)  # halves round up


def low_shot_subset(labels: torch.Tensor, labels_per_class: int | None = None, fraction: float | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Sorted indices of a stratified random subset of a labelled training set: exactly ``labels_per_class``
    samples of every class, or ``max(1, round(fraction * n_c))`` of each class ``c`` of ``n_c`` samples. The
    members of each class are drawn with ``seed`` (its own generator): the same seed gives the same subset,
    another seed another one. Raises :class:`UserError` when a class has fewer samples than asked for, or when
    some samples are unlabelled (label < 0)."""
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    if len(labels) == 0:
        raise UserError("cannot draw labelled samples from an empty training set")
    if bool((labels < 0).any()):
        raise UserError(f"{int((labels < 0).sum())} training samples have no label; a low-shot subset needs a "
                        f"labelled training set (a folder with one sub-folder per class)")
    classes, y = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(y, minlength=len(classes))
    quotas = low_shot_quotas(counts, labels_per_class, fraction)
    short = (quotas > counts).nonzero().squeeze(1).tolist()
    if short:
        listed = ", ".join(f"class {classes[c].item()} has {counts[c].item()}" for c in short[:5])
        raise UserError(f"{labels_per_class} labels per class asked for, but {listed}"
                        f"{' ...' if len(short) > 5 else ''}; ask for fewer, or use a label fraction instead")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    keep = _rank_in_class(y[perm], counts) < quotas[y[perm]]
    return perm[keep].sort().values


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
