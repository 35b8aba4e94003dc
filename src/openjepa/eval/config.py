"""Evaluation settings: the online monitor during pretraining and the final probe."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("knn", "linear")
POOLS = ("mean", "concat4")


@dataclass
class EvalConfig:
    """How representations are evaluated (see docs/evaluation.md for the exact protocols)."""

    online_every: int = 1  # epochs between online monitor runs (0: never)
    online_method: str = "knn"  # knn or linear
    online_train_samples: int = 2000  # labelled subset the monitor fits on
    online_test_samples: int = 1000  # and evaluates on
    final_probe: bool = True  # at the end of pretraining: linear probe of the target encoder vs random init
    final_train_samples: int | None = None  # cap on the final probe's training images (None: all)
    final_test_samples: int | None = None  # cap on its test images (None: all)
    pool: str = "mean"  # mean: average-pooled last layer; concat4: the last 4 layers' pooled outputs
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_holdout: float = 0.1  # fraction of the TRAINING features held out to choose the weight decay
    probe_weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the L2 sweep
    probe_max_iter: int = 300  # L-BFGS iterations per fit
    collapse_min_rank: float = 2.0  # warn when RankMe (centred) falls below this many effective directions
    collapse_min_std: float = 1e-4  # warn when feature_std * sqrt(dims) < this (1: isotropic; 0: collapsed)
    seed: int = 0  # subsets, held-out split and random-init baseline
    batch_size: int = 256  # feature-extraction batch size

    def __post_init__(self):
        if self.online_method not in METHODS:
            raise ValueError(f"eval.online_method must be one of {METHODS}, got {self.online_method!r}")
        if self.pool not in POOLS:
            raise ValueError(f"eval.pool must be one of {POOLS}, got {self.pool!r}")
        if not 0.0 < self.probe_holdout < 1.0:
            raise ValueError(f"eval.probe_holdout must be between 0 and 1 (e.g. 0.1), got {self.probe_holdout}")
        if not self.probe_weight_decays or min(self.probe_weight_decays) < 0:
            raise ValueError("eval.probe_weight_decays must be a non-empty list of values >= 0, e.g. [1e-4, 1e-3]")
        for name in ("online_train_samples", "online_test_samples", "knn_k", "batch_size", "probe_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("final_train_samples", "final_test_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1 (or null for all), got {getattr(self, name)}")
        if self.knn_temperature <= 0:
            raise ValueError(f"eval.knn_temperature must be > 0, got {self.knn_temperature}")
