"""Evaluation settings: the online monitor during pretraining and the final probe."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    online_every: int = 1  # epochs between online monitor runs (0: never)
    online_method: str = "knn"  # knn or linear
    online_train_samples: int = 2000  # labelled subset the monitor fits on
    online_test_samples: int = 1000  # and evaluates on
    final_probe: bool = True  # at the end of pretraining: linear probe of the target encoder vs random init
    pool: str = "mean"  # mean: average-pooled last layer; concat4: the last 4 layers' pooled outputs
    knn_k: int = 20
    knn_temperature: float = 0.07
    batch_size: int = 256  # feature-extraction batch size
