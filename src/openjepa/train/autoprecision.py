"""``train.precision`` resolved for one run: the shapes to measure, the measurement, the decision, applied.

The decision itself is :func:`openjepa.precision.decide_precision`; the CPU measurement is
:func:`openjepa.speed_probe.measure_cpu_rates`. This module connects them to a run's configuration and applies the
result (CPU kernels, CUDA backend flags). ``benchmarks/step.py --dtype auto`` goes through the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..masks import MaskConfig, MaskSamplingError, build_mask_sampler
from ..seeding import seeded_generator
from ..models import PRESETS, kernels
from ..models.pos_embed import to_2tuple
from ..speed_probe import ProbeShapes, measure_cpu_rates, probe_shapes
from ..precision import (CpuRates, PrecisionChoice, apply_backend_flags, cached_cpu_rates, cpu_setting,
                         decide_precision, device_info)

if TYPE_CHECKING:
    from ..config import RunConfig

MASK_DRAWS = 8  # batches of masks drawn to estimate the mean context and target lengths


def mean_mask_lengths(grid: tuple[int, int], mask: MaskConfig, batch: int) -> tuple[int, int, int]:
    """Mean context length, mean target-block length and number of target blocks of ``mask`` on ``grid``
    (seeded draws: the same settings always give the same shapes, hence the same cache entry)."""
    num_patches = grid[0] * grid[1]
    try:
        sampler = build_mask_sampler(grid, mask)
        draws = [sampler.sample(min(batch, 16), seeded_generator(0, i)) for i in range(MASK_DRAWS)]
    except MaskSamplingError:  # impossible settings are reported by the trainer's own check; shapes only here
        return max(1, round(0.35 * num_patches)), max(1, round(0.17 * num_patches)), mask.num_targets
    context = sum(d.context.shape[1] for d in draws) / len(draws)
    target = sum(d.targets.shape[-1] for d in draws) / len(draws)
    return round(context), round(target), draws[0].targets.shape[0]


def run_probe_shapes(config: RunConfig) -> ProbeShapes | None:
    """The probe shapes of a run's model, batch and masks; None for settings that describe no model (the trainer's
    own checks then explain what is wrong, before anything is measured)."""
    m = config.model
    preset = PRESETS[m.arch]
    embed_dim, heads = m.embed_dim or preset.embed_dim, m.num_heads or preset.num_heads
    pred_heads = m.pred_num_heads or heads
    height, width = to_2tuple(m.img_size)
    if m.patch_size < 1 or height < m.patch_size or width < m.patch_size or embed_dim % heads or (
        m.pred_emb_dim % pred_heads
    ):
        return None
    grid = (height // m.patch_size, width // m.patch_size)
    context_len, target_len, num_targets = mean_mask_lengths(grid, config.mask, config.data.batch_size)
    return probe_shapes(embed_dim, heads, preset.mlp_ratio, m.pred_emb_dim, pred_heads, config.data.batch_size,
                        context_len, target_len, num_targets)


def measured_rates(shapes: ProbeShapes, threads: int | None = None) -> CpuRates | None:
    """CPU rates at ``shapes`` (cached per machine), or None when ``OPENJEPA_CPU_PRECISION`` fixes the choice."""
    setting = cpu_setting()
    if setting in ("fp32", "bf16"):
        return None
    return cached_cpu_rates(shapes.signature(), lambda: measure_cpu_rates(shapes), threads,
                            remeasure=setting == "remeasure")


def resolve_precision(requested: str, device: torch.device, shapes: ProbeShapes | None = None,
                      threads: int | None = None, share: Callable[[Callable[[], CpuRates | None]], CpuRates | None]
                      | None = None) -> PrecisionChoice:
    """Decide the precision of a run on ``device`` and apply it (CPU kernels, CUDA TF32 / cuDNN flags).

    ``shapes``: what to measure on a CPU (None: nothing is measured; ``auto`` then means fp32). ``share``: under
    torchrun, runs the measurement on one process and hands its result to all, so that every process decides
    alike (and the processes do not disturb each other's timing).
    """
    setting = cpu_setting() if device.type == "cpu" else None

    def measure() -> CpuRates | None:
        return measured_rates(shapes, threads) if setting is not None and shapes is not None else None

    rates = share(measure) if share is not None else measure()
    forced = setting if setting in ("fp32", "bf16") else None
    choice = decide_precision(requested, device_info(device), rates, forced)
    apply_backend_flags(choice)
    kernels.reset_kernels()
    if choice.kernels:
        kernels.use_kernels(**choice.kernels)
    return choice
