"""The end-of-pretraining verdict: linear probe of the trained encoder against the same architecture at random
initialisation, so a user sees at once what pretraining added."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .collapse import rankme
from .config import EvalConfig
from .features import extract_features
from .loading import random_init_like
from .probe import ProbeResult, linear_probe
from .subsets import dataset_labels, stratified_subset


@dataclass
class FinalReport:
    """Probe results (None without labels) and centred RankMe of both encoders on the test features."""

    trained: ProbeResult | None
    random: ProbeResult | None
    trained_rankme: float
    random_rankme: float
    encoder_name: str = "I-JEPA target encoder"

    def line(self) -> str:
        """e.g. ``linear probe top-1: I-JEPA target encoder 0.912 | same architecture at random init 0.701
        (+21.1 points)``."""
        if self.trained is None or self.random is None:
            return (f"no labels, so no probe; effective rank (RankMe): {self.encoder_name} "
                    f"{self.trained_rankme:.1f} | same architecture at random init {self.random_rankme:.1f}")
        gain = 100 * (self.trained.top1 - self.random.top1)
        return (f"linear probe top-1: {self.encoder_name} {self.trained.top1:.3f} | same architecture at random "
                f"init {self.random.top1:.3f} ({gain:+.1f} points)")

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder_name,
            "trained": self.trained.to_dict() if self.trained else None,
            "random_init": self.random.to_dict() if self.random else None,
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
           progress: bool, name: str) -> tuple[ProbeResult | None, float]:
    test = extract_features(encoder, test_ds, cfg.pool, cfg.batch_size, device, progress, desc=f"{name}: test")
    if not test.has_labels:
        return None, rankme(test.x)
    train = extract_features(encoder, train_ds, cfg.pool, cfg.batch_size, device, progress, desc=f"{name}: train")
    if not train.has_labels or len(torch.unique(train.y)) < 2:
        return None, rankme(test.x)
    result = linear_probe(train, test, cfg.probe_weight_decays, cfg.probe_holdout, cfg.seed, cfg.probe_max_iter,
                          device, progress)
    return result, rankme(test.x)


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
    """Linear-probe ``encoder`` and ``random_encoder`` (None: :func:`random_init_like` with ``eval_cfg.seed``)
    with the same protocol on the same images (``eval_cfg.final_train_samples`` / ``final_test_samples`` cap
    them, stratified). Without labels, only the effective ranks are compared."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    if random_encoder is None:
        random_encoder = random_init_like(encoder, eval_cfg.seed)
    train_ds = _capped(train_ds, eval_cfg.final_train_samples, eval_cfg.seed)
    test_ds = _capped(test_ds, eval_cfg.final_test_samples, eval_cfg.seed + 1)
    trained, trained_rank = _probe(encoder, train_ds, test_ds, eval_cfg, device, progress, "trained")
    random, random_rank = _probe(random_encoder, train_ds, test_ds, eval_cfg, device, progress, "random init")
    return FinalReport(trained, random, trained_rank, random_rank, encoder_name)

