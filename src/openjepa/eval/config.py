"""Deprecated module: :class:`EvalConfig` lives in :mod:`openjepa.config_sections` (``openjepa.eval.EvalConfig``
still works without a warning)."""

import warnings

from ..config_sections import METHODS, POOLS, EvalConfig

warnings.warn("openjepa.eval.config is deprecated: import EvalConfig from openjepa.eval or openjepa.config_sections",
              DeprecationWarning, stacklevel=2)

__all__ = ["METHODS", "POOLS", "EvalConfig"]
