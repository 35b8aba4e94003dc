"""Anti-collapse regularisers on the context encoder's output: options beyond the paper, off by default.

I-JEPA alone has nothing that keeps its representation from shrinking onto what the predictor can guess from
positions alone; at small scale (few images, small patch grids, short runs) it does shrink: the effective rank of
the pooled features falls below that of the random initialisation. A regulariser adds ``weight * R(z)`` to the
loss, where ``z`` are embeddings of the context encoder (the student; the EMA teacher follows it):

* ``vicreg``: the variance and covariance terms of VICReg (Bardes et al., 2022), as C-JEPA adds them to I-JEPA
  (arXiv 2410.19560): ``mean_d relu(1 - std_d) + sum_{d != e} cov_de^2 / D`` over the rows of ``z``;
* ``sigreg``: the Sketched Isotropic Gaussian Regulariser of LeJEPA (arXiv 2511.08544), from its formula: ``z`` is
  projected on random unit directions, and each 1-D projection's empirical characteristic function is compared
  with that of a standard normal by the Epps-Pulley statistic.

Which embeddings (``on``): ``pooled`` (the mean over each image's context tokens: one row per image, what the
evaluation pools), ``content`` (every context token minus the batch mean of the tokens at the same patch position:
rows that differ by image content only, since position alone must not satisfy the regulariser), or both
(``pooled+content``: the sum of the two terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("none", "vicreg", "sigreg")
EMBEDDINGS = ("pooled", "content", "pooled+content")
VARIANCE_EPS = 1e-4  # inside the square root of VICReg's standard deviation (keeps its gradient finite at 0)


def vicreg_terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's variance term ``mean_d relu(1 - std_d)`` and covariance term ``sum_{d != e} cov_de^2 / D`` of the
    rows of ``z`` ``[N, D]`` (N >= 2), computed in fp32."""
    z = z.float()
    z = z - z.mean(dim=0)
    variance = torch.relu(1.0 - torch.sqrt(z.var(dim=0) + VARIANCE_EPS)).mean()
    cov = (z.T @ z) / (z.shape[0] - 1)
    off_diagonal = cov.square().sum() - cov.diagonal().square().sum()
    return variance, off_diagonal / z.shape[1]


def vicreg(z: torch.Tensor) -> torch.Tensor:
    """Variance + covariance terms of VICReg (see :func:`vicreg_terms`)."""
    variance, covariance = vicreg_terms(z)
    return variance + covariance


def epps_pulley(x: torch.Tensor, knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """Epps-Pulley statistic of each column of ``x`` ``[N, S]`` against N(0, 1), ``[S]``:
    ``N * integral |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt`` over the real line, where ``phi_N`` is the
    empirical characteristic function; integrated by the trapezoid rule on ``[0, t_max]`` (the integrand is even,
    and its weight is below 1e-2 beyond ``t = 3``). About 1 for a sample of N(0, 1), growing with N otherwise."""
    n = x.shape[0]
    t = torch.linspace(0.0, t_max, knots, device=x.device, dtype=torch.float32)
    tx = x.float().unsqueeze(-1) * t  # [N, S, T]
    gauss = torch.exp(-0.5 * t * t)
    err = (torch.cos(tx).mean(0) - gauss).square() + torch.sin(tx).mean(0).square()  # |phi_N - phi|^2, [S, T]
    return n * 2.0 * torch.trapezoid(err * gauss, t, dim=-1)


def sigreg(z: torch.Tensor, num_slices: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean Epps-Pulley statistic of the rows of ``z`` ``[N, D]`` over ``num_slices`` random unit directions
    (drawn on the CPU from ``generator``, or from torch's global generator)."""
    directions = torch.randn(z.shape[-1], num_slices, generator=generator)
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(z.device)
    return epps_pulley(z.float() @ directions).mean()


def position_centred(z: torch.Tensor, positions: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Tokens ``z`` ``[B, K, D]`` at patch positions ``positions`` ``[B, K]``, each minus the batch mean of the
    tokens at its position: ``[B*K, D]`` rows that differ by image content, not by position."""
    flat, pos = z.reshape(-1, z.shape[-1]), positions.reshape(-1)
    sums = torch.zeros(num_positions, z.shape[-1], device=z.device, dtype=z.dtype).index_add_(0, pos, flat)
    counts = torch.bincount(pos, minlength=num_positions).clamp_min(1).to(z.dtype)
    return flat - (sums / counts[:, None])[pos]


@dataclass(frozen=True)
class Regularizer:
    """``weight * kind(embeddings)`` of the context encoder's output, added to the I-JEPA loss."""

    kind: str = "none"  # none (the paper), vicreg or sigreg
    weight: float = 1.0
    on: str = "pooled"  # pooled, content, or pooled+content
    num_slices: int = 256  # sigreg: random directions per step

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"regularizer must be one of {KINDS}, got {self.kind!r}")
        if self.on not in EMBEDDINGS:
            raise ValueError(f"regularizer_on must be one of {EMBEDDINGS}, got {self.on!r}")
        if self.weight < 0:
            raise ValueError(f"regularizer_weight must be >= 0, got {self.weight}")
        if self.num_slices < 1:
            raise ValueError(f"regularizer_slices must be >= 1, got {self.num_slices}")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.weight > 0

    def embeddings(self, z: torch.Tensor, context_idx: torch.Tensor, num_positions: int) -> list[torch.Tensor]:
        """The ``[N, D]`` matrices the regulariser sees, for context tokens ``z`` ``[B, Kc, D]``."""
        parts = []
        if "pooled" in self.on:
            parts.append(z.mean(dim=1))
        if "content" in self.on:
            parts.append(position_centred(z, context_idx, num_positions))
        return parts

    def __call__(self, z: torch.Tensor, context_idx: torch.Tensor, num_positions: int) -> torch.Tensor:
        """``weight * sum over embeddings of R(embeddings)`` (a scalar)."""
        term = vicreg if self.kind == "vicreg" else lambda e: sigreg(e, self.num_slices)
        return self.weight * sum(term(e) for e in self.embeddings(z, context_idx, num_positions))
