"""Deprecated module: the architecture of a checkpoint is read off its weights by
:mod:`openjepa.arch_from_weights` (its functions are still exported by :mod:`openjepa.interop`)."""

import warnings

from ..arch_from_weights import (
                                 block_count,
                                 encoder_arch,
                                 heads_for_width,
                                 mlp_ratio_for,
                                 model_config_from_weights,
                                 predictor_arch,
                                 square_side,
)

warnings.warn("openjepa.interop.architecture is deprecated: import from openjepa.arch_from_weights or openjepa.interop",
              DeprecationWarning, stacklevel=2)

__all__ = ["block_count", "encoder_arch", "heads_for_width", "mlp_ratio_for", "model_config_from_weights",
           "predictor_arch", "square_side"]
