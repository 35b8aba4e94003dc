"""Online monitoring during pretraining: a quick k-NN or linear score plus collapse measures on fixed subsets.

The subsets are drawn once (seeded, stratified when the labels are known up front), so successive runs measure
the same images and their numbers are comparable across the training run. A run leaves training untouched: the
encoder goes back to its previous mode, and no random number is drawn from the global generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from ..config_sections import EvalConfig
from .collapse import baseline_problems, collapse_problems, feature_std, format_warning, rankme
from .features import Features, extract_features, make_loader
from .knn import knn_classify
from .probe import linear_probe
from .subsets import dataset_labels, stratified_subset

CACHE_BYTES = 512 * 2**20  # subsets whose images fit in this are decoded once and kept in memory


class FixedSubset:
    """``size`` samples of a dataset chosen once (stratified by label when the dataset exposes its labels);
    their images are cached after the first pass when they are small enough."""

    def __init__(self, dataset: Dataset, size: int, seed: int):
        labels = dataset_labels(dataset)
        self.indices = stratified_subset(labels, len(dataset), size, seed)  # type: ignore[arg-type]
        self.subset = Subset(dataset, self.indices.tolist())
        self.cached: TensorDataset | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def features(self, encoder: nn.Module, pool: str, batch_size: int, device: torch.device) -> Features:
        data = self.cached if self.cached is not None else self.subset
        if self.cached is None and self._fits_in_cache():
            data = self.cached = self._load_all(batch_size)
        return extract_features(encoder, data, pool, batch_size, device, progress=False)

    def _fits_in_cache(self) -> bool:
        first = self.subset[0]
        image = first[0] if isinstance(first, (tuple, list)) else first
        return isinstance(image, torch.Tensor) and image.numel() * image.element_size() * len(self) <= CACHE_BYTES

    def _load_all(self, batch_size: int) -> TensorDataset:
        images, labels = [], []
        for batch in make_loader(self.subset, batch_size):
            if isinstance(batch, torch.Tensor):
                batch = (batch, torch.full((len(batch),), -1))
            images.append(batch[0])
            labels.append(torch.as_tensor(batch[1]).long())
        return TensorDataset(torch.cat(images), torch.cat(labels))


class OnlineMonitor:
    """Scores an encoder during pretraining, in a few seconds for small models.

    ``train_ds`` / ``test_ds``: labelled evaluation datasets of ``(image, label)``; ``train_ds`` may be None
    (no labels: only the collapse measures, computed on ``test_ds``, which may then be unlabelled). ``run``
    returns ``{"knn_top1" | "linear_top1", ("..._top5"), "rankme", "feature_std"}`` and sets
    :attr:`last_warning` to a collapse warning or None. After :meth:`set_baseline` (the same architecture at
    random initialisation, scored once), the warning also fires when the encoder scores no better than that
    baseline or spans fewer effective directions (RankMe) than it.
    """

    def __init__(self, eval_cfg: EvalConfig, train_ds: Dataset | None, test_ds: Dataset | None,
                 device: str | torch.device | None = None):
        if train_ds is None and test_ds is None:
            raise ValueError("OnlineMonitor needs at least one dataset (an unlabelled one still gives rank and std)")
        self.cfg = eval_cfg
        self.device = torch.device(device) if device is not None else None
        seed = eval_cfg.seed
        self.train = FixedSubset(train_ds, eval_cfg.online_train_samples, seed) if train_ds is not None else None
        self.test = FixedSubset(test_ds, eval_cfg.online_test_samples, seed + 1) if test_ds is not None else None
        self.last_warning: str | None = None
        self.baseline: dict[str, float] | None = None

    def set_baseline(self, encoder: nn.Module) -> dict[str, float]:
        """Score ``encoder`` (an untrained one: the reference point of every later :meth:`run`) and keep it."""
        self.baseline = None
        self.baseline = self.run(encoder)
        self.last_warning = None
        return self.baseline

    def run(self, encoder: nn.Module) -> dict[str, float]:
        """Accuracy (when labelled) and collapse measures of ``encoder`` on the fixed subsets."""
        cfg = self.cfg
        device = self.device or next(encoder.parameters()).device
        args = (encoder, cfg.pool, cfg.batch_size, device)
        test = self.test.features(*args) if self.test is not None else None
        train = self.train.features(*args) if self.train is not None else None
        metrics: dict[str, float] = {}
        if train is not None and test is not None and _usable_labels(train, test):
            metrics.update(self._accuracy(train, test, device))
        probe = test if test is not None else train
        metrics["rankme"] = rankme(probe.x)
        metrics["feature_std"] = feature_std(probe.x)
        problems = collapse_problems(metrics["rankme"], metrics["feature_std"], len(probe), probe.dim,
                                     cfg.collapse_min_rank, cfg.collapse_min_std)
        if self.baseline is not None:
            problems += baseline_problems(metrics, self.baseline)
        self.last_warning = format_warning(problems)
        return metrics

    def _accuracy(self, train: Features, test: Features, device: torch.device) -> dict[str, float]:
        cfg = self.cfg
        if cfg.online_method == "knn":
            result = knn_classify(train, test, cfg.knn_k, cfg.knn_temperature, device)
        else:
            result = linear_probe(train, test, cfg.probe_weight_decays, cfg.probe_holdout, cfg.seed,
                                  cfg.probe_max_iter, device)
        out = {f"{cfg.online_method}_top1": result.top1}
        if result.top5 is not None:
            out[f"{cfg.online_method}_top5"] = result.top5
        return out

    def describe(self, metrics: dict[str, float]) -> str:
        """One line for the training log, e.g. ``knn top-1 0.812 | rankme 41.3 | feature std 0.021``."""
        parts = [f"{key.replace('_top', ' top-')} {value:.3f}" for key, value in metrics.items() if "_top" in key]
        if "rankme" in metrics:
            parts.append(f"rankme {metrics['rankme']:.1f}")
        if "feature_std" in metrics and not math.isnan(metrics["feature_std"]):
            parts.append(f"feature std {metrics['feature_std']:.4f}")
        return " | ".join(parts)


def _usable_labels(train: Features, test: Features) -> bool:
    """Labels that can score a classifier: known everywhere, and at least two classes to tell apart."""
    return train.has_labels and test.has_labels and len(torch.unique(train.y)) > 1
