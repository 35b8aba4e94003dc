"""The end-of-pretraining verdict: linear probe and k-NN of the trained encoder against the same architecture at
random initialisation, so a user sees at once what pretraining added."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..config_sections import EvalConfig
from .baseline import random_init_like
from .collapse import rankme
from .features import extract_features
from .knn import KnnResult, knn_classify
from .probe import ProbeResult, linear_probe
from .subsets import dataset_labels, stratified_subset


@dataclass
class FinalReport:
    """Linear-probe and k-NN results (None without labels) and centred RankMe of both encoders on the test
    features."""

    trained: ProbeResult | None
    random: ProbeResult | None
    trained_rankme: float
    random_rankme: float
    encoder_name: str = "I-JEPA target encoder"
    trained_knn: KnnResult | None = None
    random_knn: KnnResult | None = None

    def line(self) -> str:
        """e.g. ``linear probe top-1: I-JEPA target encoder 0.912 | same architecture at random init 0.701
        (+21.1 points)``, and a second line for k-NN when it was measured."""
        if self.trained is None or self.random is None:
            return (f"no labels, so no probe; effective rank (RankMe): {self.encoder_name} "
                    f"{self.trained_rankme:.1f} | same architecture at random init {self.random_rankme:.1f}")
        rows = [("linear probe top-1:", self.trained.top1, self.random.top1)]
        if self.trained_knn is not None and self.random_knn is not None:
            rows.append((f"k-NN top-1 (k={self.trained_knn.k}):", self.trained_knn.top1, self.random_knn.top1))
        width = max(len(label) for label, _, _ in rows)  # aligned columns when there are two lines
        return "\n".join(self._compare(label.ljust(width), trained, random) for label, trained, random in rows)

    def _compare(self, label: str, trained: float, random: float) -> str:
        return (f"{label} {self.encoder_name} {trained:.3f} | same architecture at random init {random:.3f} "
                f"({100 * (trained - random):+.1f} points)")

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder_name,
            "trained": self.trained.to_dict() if self.trained else None,
            "random_init": self.random.to_dict() if self.random else None,
            "trained_knn": self.trained_knn.to_dict() if self.trained_knn else None,
            "random_init_knn": self.random_knn.to_dict() if self.random_knn else None,
            "trained_rankme": self.trained_rankme,
            "random_rankme": self.random_rankme,
            "line": self.line(),
        }


def _capped(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(dataset):  # type: ignore[arg-type]
        return dataset
    indices = stratified_subset(dataset_labels(dataset), len(dataset), size, seed)  # type: ignore[arg-type]
    return Subset(dataset, indices.tolist())


def _probe(encoder: nn.Module, train_ds: Dataset, test_ds: Dataset, cfg: EvalConfig, device: torch.device,
           progress: bool, name: str) -> tuple[ProbeResult | None, KnnResult | None, float]:
    test = extract_features(encoder, test_ds, cfg.pool, cfg.batch_size, device, progress, desc=f"{name}: test")
    if not test.has_labels:
        return None, None, rankme(test.x)
    train = extract_features(encoder, train_ds, cfg.pool, cfg.batch_size, device, progress, desc=f"{name}: train")
    if not train.has_labels or len(torch.unique(train.y)) < 2:
        return None, None, rankme(test.x)
    result = linear_probe(train, test, cfg.probe_weight_decays, cfg.probe_holdout, cfg.seed, cfg.probe_max_iter,
                          device, progress)
    knn = knn_classify(train, test, cfg.knn_k, cfg.knn_temperature, device)
    return result, knn, rankme(test.x)


def final_report(
    encoder: nn.Module,
    random_encoder: nn.Module | None,
    train_ds: Dataset,
    test_ds: Dataset,
    eval_cfg: EvalConfig,
    device: str | torch.device | None = None,
    progress: bool = True,
    encoder_name: str = "I-JEPA target encoder",
) -> FinalReport:
    """Linear-probe and k-NN ``encoder`` and ``random_encoder`` (None: :func:`random_init_like` with
    ``eval_cfg.seed``) with the same protocols on the same images (``eval_cfg.final_train_samples`` / ``final_test_samples`` cap
    them, stratified). Without labels, only the effective ranks are compared."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    if random_encoder is None:
        random_encoder = random_init_like(encoder, eval_cfg.seed)
    train_ds = _capped(train_ds, eval_cfg.final_train_samples, eval_cfg.seed)
    test_ds = _capped(test_ds, eval_cfg.final_test_samples, eval_cfg.seed + 1)
    trained, trained_knn, trained_rank = _probe(encoder, train_ds, test_ds, eval_cfg, device, progress, "trained")
    random, random_knn, random_rank = _probe(random_encoder, train_ds, test_ds, eval_cfg, device, progress,
                                             "random init")
    return FinalReport(trained, random, trained_rank, random_rank, encoder_name, trained_knn, random_knn)

