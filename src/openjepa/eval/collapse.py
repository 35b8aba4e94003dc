"""Label-free health measures of a representation: effective rank (RankMe) and feature spread.

A joint-embedding method can fail by collapse: every image maps to (nearly) the same vector, or to a few
directions. Both measures below fall towards their minimum when that happens, whatever the loss says.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config_sections import EvalConfig

_DEFAULTS = EvalConfig()
RANKME_EPS = 1e-7  # added to the normalised singular values before the entropy (as in Garrido et al.)


def rankme(features: torch.Tensor, center: bool = True) -> float:
    """Effective rank (RankMe, Garrido et al., 2023): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) +
    eps`` over the singular values ``s`` of the ``[N, D]`` features. Between 1 (everything along one direction)
    and ``min(N, D)`` (all singular values equal).

    ``center`` (default True) first subtracts the mean feature. The paper uses the raw matrix; but pooled ViT
    features share a large mean vector (RankMe ~1 even at random initialisation), which hides how many
    directions the part that differs between images spans. ``center=False`` gives the paper's number.
    """
    if features.dim() != 2 or min(features.shape) == 0:
        raise ValueError(f"rankme needs a non-empty [N, D] matrix, got shape {tuple(features.shape)}")
    x = features.detach().double()
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= 0:
        return 1.0  # all rows identical: a single point, the most collapsed representation there is
    p = s / total + RANKME_EPS
    return math.exp(-(p * p.log()).sum().item())


def feature_std(features: torch.Tensor) -> float:
    """Mean over dimensions of the standard deviation of the L2-normalised features.

    About ``1 / sqrt(D)`` for isotropic features, 0 when every sample maps to the same direction."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_std needs at least 2 rows of [N, D] features, got {tuple(features.shape)}")
    return F.normalize(features.detach().float(), dim=1).std(dim=0).mean().item()


def collapse_problems(
    rank: float,
    std: float,
    num_samples: int,
    dim: int,
    min_rank: float = _DEFAULTS.collapse_min_rank,
    min_std: float = _DEFAULTS.collapse_min_std,
) -> list[str]:
    """The signs of collapse in a representation's measures, one sentence each (empty when there are none).

    The (centred) RankMe < ``min_rank`` (dimensional collapse: the differences between images lie along fewer
    than ``min_rank`` effective directions), or ``std * sqrt(D) < min_std`` (complete collapse: all features
    nearly the same vector; the product is 1 for isotropic features). The defaults fire only on clear collapse: a
    random-init ViT-Tiny on 8x8 digits upscaled to 32x32 measures a centred RankMe of about 3 and
    ``std * sqrt(D)`` of about 0.01.
    """
    problems = []
    if rank < min_rank:
        problems.append(f"effective rank (RankMe) {rank:.2f} is below {min_rank:g} "
                        f"(of a possible {min(num_samples, dim)})")
    spread = std * math.sqrt(dim)
    if spread < min_std:
        problems.append(f"normalised feature std x sqrt(D) is {spread:.3f} (below {min_std:g}; 1 = isotropic)")
    return problems


def baseline_problems(metrics: dict[str, float], baseline: dict[str, float]) -> list[str]:
    """What a trained encoder's monitor ``metrics`` say next to those of the same architecture at random
    initialisation (``baseline``, measured the same way): an accuracy not above it, or a lower effective rank
    (the features span fewer directions than an untrained network's: dimensional collapse)."""
    problems = []
    for key, value in metrics.items():
        if key.endswith("_top1") and key in baseline and value <= baseline[key]:
            name = key.removesuffix("_top1").replace("knn", "k-NN")
            problems.append(f"{name} top-1 {value:.3f} is not above the same architecture at random init "
                            f"({baseline[key]:.3f})")
    if "rankme" in metrics and "rankme" in baseline and metrics["rankme"] < baseline["rankme"]:
        problems.append(f"effective rank (RankMe) {metrics['rankme']:.1f} is below the random-init encoder's "
                        f"{baseline['rankme']:.1f}")
    return problems


def decline_problems(metrics: dict[str, float], history: list[dict], min_points: float | None) -> list[str]:
    """Each monitor accuracy that has fallen at least ``min_points`` (top-1, in points) below its best in
    ``history`` (the run's earlier monitor rows, with ``epoch``). Not collapse: a representation that training
    is making worse, which happened on Fashion-MNIST when a small-data recipe ran three times longer than usual
    (docs/benchmarks.md, "Three times the budget"). ``min_points`` None or 0: never."""
    if not min_points:
        return []
    problems = []
    for key, value in metrics.items():
        earlier = [row for row in history if isinstance(row.get(key), (int, float))]
        if not key.endswith("_top1") or not earlier:
            continue
        best = max(earlier, key=lambda row: row[key])
        drop = 100 * (best[key] - value)
        if drop >= min_points:
            name = key.removesuffix("_top1").replace("knn", "k-NN")
            problems.append(f"{name} top-1 {value:.3f} is {drop:.1f} points below this run's best "
                            f"({best[key]:.3f} after epoch {best.get('epoch', '?')})")
    return problems


def format_decline(problems: list[str]) -> str | None:
    """One warning for all ``problems`` of :func:`decline_problems` (None when there are none)."""
    if not problems:
        return None
    return ("features getting worse with training: " + "; ".join(problems) + ". A shorter schedule (optim.epochs, "
            "train.max_minutes) may end better; see docs/troubleshooting.md (\"Monitor accuracy falling\").")


def format_warning(problems: list[str]) -> str | None:
    """One warning for all ``problems`` (None when there are none)."""
    if not problems:
        return None
    return ("representation collapse suspected: " + "; ".join(problems) + ". Check the learning rate, the EMA "
            "momentum and the masking settings; at small scale an anti-collapse regulariser helps "
            "(model.regularizer, docs/training.md).")


def collapse_warning(
    rank: float,
    std: float,
    num_samples: int,
    dim: int,
    min_rank: float = _DEFAULTS.collapse_min_rank,
    min_std: float = _DEFAULTS.collapse_min_std,
) -> str | None:
    """A warning when the representation looks collapsed (see :func:`collapse_problems`), else None."""
    return format_warning(collapse_problems(rank, std, num_samples, dim, min_rank, min_std))


def check_collapse(features: torch.Tensor, cfg: EvalConfig | None = None) -> str | None:
    """:func:`collapse_warning` for a feature matrix, with the thresholds of ``cfg``."""
    cfg = cfg or _DEFAULTS
    return collapse_warning(rankme(features), feature_std(features), features.shape[0], features.shape[1],
                            cfg.collapse_min_rank, cfg.collapse_min_std)

