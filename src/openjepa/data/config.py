"""Deprecated module: :class:`DataConfig` lives in :mod:`openjepa.config_sections` (``openjepa.data.DataConfig``
still works without a warning)."""

import warnings

from ..config_sections import DATASETS, DataConfig

warnings.warn("openjepa.data.config is deprecated: import DataConfig from openjepa.data or openjepa.config_sections",
              DeprecationWarning, stacklevel=2)

__all__ = ["DATASETS", "DataConfig"]
