"""Linear probe: multinomial logistic regression on frozen features, L2 strength chosen on held-out train data.

Protocol: standardise with the training set's mean and std; for each weight decay of a small sweep, fit on the
training set minus a stratified held-out fraction and score on that fraction; refit on the whole training set
with the best value; report the test accuracy. The test set plays no part in any choice. Fits are full-batch
L-BFGS (the objective is convex and smooth, so a few hundred iterations reach the optimum, deterministically).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config_sections import EvalConfig
from .accuracy import class_index, summary_line, topk_hits
from .features import Features
from .subsets import stratified_split

_DEFAULTS = EvalConfig()


@dataclass
class LinearClassifier:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight + bias``; column ``j`` is label ``classes[j]``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    classes: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.device, torch.float32)
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels (in the original label values)."""
        return self.classes[self.logits(x).argmax(dim=1).cpu()]


@dataclass
class ProbeResult:
    top1: float
    top5: float | None  # only with more than 5 classes
    weight_decay: float  # the chosen L2 strength
    holdout_fraction: float
    sweep: dict[float, float]  # weight decay -> held-out top-1
    n_train: int
    n_test: int
    num_classes: int
    classifier: LinearClassifier | None = field(default=None, repr=False)

    def line(self, context: str = "") -> str:
        """One-line summary; ``context`` (e.g. ``"target encoder, mean pool"``) goes inside the parentheses."""
        settings = f"wd={self.weight_decay:.0e} chosen on {self.holdout_fraction:.0%} of train"
        return summary_line("linear probe", self.top1, self.top5, settings, self.n_train, self.n_test, context)

    def to_dict(self) -> dict:
        return {"method": "linear", "top1": self.top1, "top5": self.top5, "weight_decay": self.weight_decay,
                "holdout_fraction": self.holdout_fraction, "sweep": {f"{k:g}": v for k, v in self.sweep.items()},
                "n_train": self.n_train, "n_test": self.n_test, "num_classes": self.num_classes}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 300,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias unpenalised) by L-BFGS, from zero or
    from ``init = (weight [F, C], bias [C])``."""
    if init is None:
        init = (torch.zeros(x.shape[1], num_classes, device=x.device), torch.zeros(num_classes, device=x.device))
    weight, bias = (t.detach().clone().requires_grad_(True) for t in init)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may sit inside no_grad (e.g. a training loop's eval hook)
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _score(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[float, float]:
    """(top-1, cross-entropy) of a fitted probe on standardised features."""
    logits = x @ weight + bias
    return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def select_weight_decay(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays, holdout: float,
                        seed: int, max_iter: int, progress: bool = False):
    """Best weight decay by held-out top-1 (ties: lower held-out cross-entropy) on a stratified split of the
    standardised TRAINING features ``x``. Returns it, the held-out top-1 of every candidate, and the
    ``(weight, bias)`` fitted with it (a warm start for the final fit)."""
    fit_idx, val_idx = stratified_split(y.cpu(), holdout, seed)
    fit_idx, val_idx = fit_idx.to(x.device), val_idx.to(x.device)
    x_fit, y_fit, x_val, y_val = x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]
    sweep, best, solution = {}, (-1.0, math.inf, None, None), None
    # Strongest regularisation first, each fit warm-started from the previous one: neighbouring solutions on
    # the regularisation path are close, so the weakly regularised (slowest) fits start near their optimum.
    for wd in tqdm(sorted(weight_decays, reverse=True), desc="probe sweep", disable=not progress, leave=False):
        solution = fit_logistic(x_fit, y_fit, num_classes, wd, max_iter, init=solution)
        acc, loss = _score(x_val, y_val, *solution)
        sweep[float(wd)] = acc
        if acc > best[0] or (acc == best[0] and loss < best[1]):
            best = (acc, loss, float(wd), solution)
    return best[2], dict(sorted(sweep.items())), best[3]


def _check(train: Features, test: Features) -> None:
    if not train.has_labels or not test.has_labels:
        raise ValueError("the linear probe needs labelled train and test features (labels >= 0)")
    if train.dim != test.dim:
        raise ValueError(f"train features have {train.dim} dimensions but test features {test.dim}")
    if len(torch.unique(train.y)) < 2:
        raise ValueError("the linear probe needs at least 2 classes in the training labels")


def linear_probe(
    train: Features,
    test: Features,
    weight_decays=_DEFAULTS.probe_weight_decays,
    holdout: float = _DEFAULTS.probe_holdout,
    seed: int = _DEFAULTS.seed,
    max_iter: int = _DEFAULTS.probe_max_iter,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ProbeResult:
    """Fit a linear classifier on ``train`` (weight decay chosen on a held-out part of ``train``) and report its
    top-1 (and top-5 when there are more than 5 classes) on ``test``. Deterministic for a given ``seed``."""
    _check(train, test)
    device = torch.device(device or "cpu")
    classes, y_train, y_test = class_index(train.y, test.y)
    x_train, x_test = train.x.to(device, torch.float32), test.x.to(device, torch.float32)
    mean = x_train.mean(0)
    std = x_train.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: leave them be
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = y_train.to(device), y_test.to(device)
    wd, sweep, start = select_weight_decay(x_train, y_train, len(classes), weight_decays, holdout, seed, max_iter,
                                           progress)
    weight, bias = fit_logistic(x_train, y_train, len(classes), wd, max_iter, init=start)
    logits = x_test @ weight + bias
    top1 = topk_hits(logits, y_test, 1).float().mean().item()
    top5 = topk_hits(logits, y_test, 5).float().mean().item() if len(classes) > 5 else None
    return ProbeResult(top1, top5, wd, holdout, sweep, len(train), len(test), len(classes),
                       LinearClassifier(mean, std, weight, bias, classes))
