"""Pretraining: ``pretrain(config)`` runs I-JEPA on CPU, one GPU or under torchrun.

The trainer's modules are imported on first use, so that ``openjepa.config`` can import ``train.config``
without pulling in (and circularly depending on) the whole loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import OptimConfig, TrainConfig

if TYPE_CHECKING:
    from ..config import RunConfig
    from .trainer import PretrainResult


def pretrain(config: RunConfig, resume: str | Path | None = None, overwrite: bool = False) -> PretrainResult:
    """Pretrain with ``config``; ``resume`` is a checkpoint file (openjepa's or a released one) to continue from.

    >>> from openjepa.config import load_config
    >>> result = pretrain(load_config("digits", ["optim.epochs=1"]))  # doctest: +SKIP
    """
    from .autoprecision import run_probe_shapes
    from .runtime import setup_runtime, shutdown_runtime
    from .trainer import Trainer

    runtime = setup_runtime(config.train.device, config.train.precision, run_probe_shapes(config),
                            config.train.threads)
    try:
        return Trainer(config, runtime, Path(resume) if resume else None, overwrite).run()
    finally:
        shutdown_runtime(runtime)


def __getattr__(name: str) -> Any:
    if name in ("PretrainResult", "Trainer", "TrainingDiverged"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)


__all__ = ["OptimConfig", "PretrainResult", "TrainConfig", "Trainer", "TrainingDiverged", "pretrain"]
