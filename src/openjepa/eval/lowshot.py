"""Low-shot evaluation: score a classifier trained on a few labels per class, over several random draws.

A :class:`LowShot` says how many labels to keep (``labels_per_class`` of every class, or a ``fraction`` of each
class: the I-JEPA paper's 1 % protocol is ``fraction=0.01``) and how many independent draws to make. Each draw is
a stratified random subset of the TRAINING set (:func:`~openjepa.eval.subsets.low_shot_subset`), seeded by
``seed + k`` for draw ``k``; the test set is never subsampled or looked at. :func:`over_draws` runs any
evaluation once per draw and reports the mean and standard deviation of its accuracy, with the seeds and the
chosen training indices of every draw, so that a result can be reproduced or audited.

>>> spec = LowShot(fraction=0.01, draws=3)                                  # doctest: +SKIP
>>> result = low_shot_linear(train_features, test_features, spec)           # doctest: +SKIP
>>> print(result.line())    # linear probe top-1 0.712 +- 0.013 (3 draws of 1% of the labels ...)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .features import Features
from .knn import knn_classify
from .probe import linear_probe
from .subsets import low_shot_subset


@dataclass(frozen=True)
class LowShot:
    """Which labelled subsets to evaluate on: ``labels_per_class`` *or* ``fraction``; ``draws`` independent
    subsets, draw ``k`` seeded with ``seed + k``."""

    labels_per_class: int | None = None
    fraction: float | None = None
    draws: int = 1
    seed: int = 0

    def __post_init__(self):
        if (self.labels_per_class is None) == (self.fraction is None):
            raise UserError("low-shot: give either a number of labels per class or a label fraction, not both")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise UserError(f"labels per class must be >= 1, got {self.labels_per_class}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"the label fraction must be in (0, 1] (0.01 for 1 %), got {self.fraction}")
        if self.draws < 1:
            raise UserError(f"the number of draws must be >= 1, got {self.draws}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.draws)]

    def describe(self) -> str:
        """``10 labels per class`` or ``1% of the labels``."""
        if self.labels_per_class is not None:
            return f"{self.labels_per_class} label{'s' if self.labels_per_class != 1 else ''} per class"
        return f"{100 * self.fraction:g}% of the labels"

    def indices(self, labels: torch.Tensor, draw: int = 0) -> torch.Tensor:
        """Sorted training indices of draw ``draw`` (stratified, seeded with ``seed + draw``)."""
        return low_shot_subset(labels, self.labels_per_class, self.fraction, self.seed + draw)

    def to_dict(self) -> dict[str, Any]:
        return {"labels_per_class": self.labels_per_class, "fraction": self.fraction, "draws": self.draws,
                "seed": self.seed}


@dataclass
class Draw:
    """One draw: its seed, the training indices it kept and the evaluation's result on them."""

    seed: int
    indices: list[int]
    result: Any  # ProbeResult, KnnResult, AttentiveResult ... (anything with top1, top5, to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "n_train": len(self.indices), "top1": self.result.top1,
                "top5": self.result.top5, "result": self.result.to_dict(), "indices": self.indices}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class LowShotResult:
    """Per-draw results of one evaluation and their mean / standard deviation (sample std, ``None`` for one
    draw)."""

    method: str  # linear, knn, attentive, finetune ...
    spec: LowShot
    draws: list[Draw] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return _mean_std([d.result.top1 for d in self.draws])[0]

    @property
    def top1_std(self) -> float | None:
        return _mean_std([d.result.top1 for d in self.draws])[1]

    @property
    def top5(self) -> float | None:
        values = [d.result.top5 for d in self.draws]
        return None if any(v is None for v in values) else _mean_std(values)[0]

    @property
    def top5_std(self) -> float | None:
        values = [d.result.top5 for d in self.draws]
        return None if any(v is None for v in values) else _mean_std(values)[1]

    def line(self, context: str = "") -> str:
        """e.g. ``linear probe top-1 0.712 +- 0.013 top-5 ... (3 draws of 1% of the labels, 600 train / 10000
        test, target encoder)``."""
        label = {"linear": "linear probe", "knn": "k-NN", "attentive": "attentive probe",
                 "finetune": "fine-tuned"}.get(self.method, self.method)

        def pm(mean: float, std: float | None) -> str:
            return f"{mean:.3f}" + (f" +- {std:.3f}" if std is not None else "")

        top5 = f" top-5 {pm(self.top5, self.top5_std)}" if self.top5 is not None else ""
        n_train = sorted({len(d.indices) for d in self.draws})
        sizes = "/".join(str(n) for n in n_train)
        n_test = getattr(self.draws[0].result, "n_test", None)
        count = f"{self.spec.draws} draw{'s' if self.spec.draws != 1 else ''}"
        extra = f", {context}" if context else ""
        return (f"{label} top-1 {pm(self.top1, self.top1_std)}{top5} ({count} of {self.spec.describe()}, "
                f"{sizes} train / {n_test} test{extra})")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "top1": self.top1, "top1_std": self.top1_std, "top5": self.top5,
                "top5_std": self.top5_std, "low_shot": self.spec.to_dict(),
                "draws": [d.to_dict() for d in self.draws]}


def over_draws(labels: torch.Tensor, spec: LowShot, evaluate: Callable[[torch.Tensor, int], Any], method: str,
               progress: bool = False) -> LowShotResult:
    """Run ``evaluate(train_indices, seed)`` once per draw of ``spec`` over the training ``labels`` and collect
    the results (each needs ``top1``, ``top5`` and ``to_dict()``)."""
    result = LowShotResult(method, spec)
    for k, seed in enumerate(tqdm(spec.seeds, desc=f"{method}: low-shot draws", disable=not progress or
                                  spec.draws == 1, leave=False, unit="draw")):
        indices = spec.indices(labels, k)
        outcome = evaluate(indices, seed)
        if not math.isfinite(outcome.top1):
            raise ValueError(f"draw {k} gave a non-finite accuracy {outcome.top1}")
        result.draws.append(Draw(seed, indices.tolist(), outcome))
    return result


def low_shot_linear(train: Features, test: Features, spec: LowShot, progress: bool = False,
                    **probe_kwargs) -> LowShotResult:
    """:func:`~openjepa.eval.linear_probe` on each draw's labelled subset of ``train``, scored on all of ``test``
    (``probe_kwargs``: weight_decays, holdout, seed, max_iter, device)."""
    return over_draws(train.y, spec, lambda idx, _: linear_probe(train.subset(idx), test, **probe_kwargs),
                      "linear", progress)


def low_shot_knn(train: Features, test: Features, spec: LowShot, progress: bool = False,
                 **knn_kwargs) -> LowShotResult:
    """:func:`~openjepa.eval.knn_classify` with each draw's labelled subset of ``train`` as the neighbours
    (``knn_kwargs``: k, temperature, device)."""
    return over_draws(train.y, spec, lambda idx, _: knn_classify(train.subset(idx), test, **knn_kwargs),
                      "knn", progress)
