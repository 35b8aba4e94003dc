"""Deprecated module: :class:`OptimConfig` and :class:`TrainConfig` live in :mod:`openjepa.config_sections`
(``openjepa.train.OptimConfig`` / ``TrainConfig`` still work without a warning)."""

import warnings

from ..config_sections import DEVICES, PRECISIONS, OptimConfig, TrainConfig

warnings.warn("openjepa.train.config is deprecated: import OptimConfig / TrainConfig from openjepa.train or "
              "openjepa.config_sections", DeprecationWarning, stacklevel=2)

__all__ = ["DEVICES", "PRECISIONS", "OptimConfig", "TrainConfig"]
