"""The released I-JEPA checkpoints (``.pth.tar``): build the matching model, load it, resume training from it.

A released file holds ``encoder``, ``predictor`` and ``target_encoder`` state dicts (keys prefixed ``module.``
by DistributedDataParallel), the AdamW state ``opt``, the AMP ``scaler`` state and ``epoch``, ``loss``,
``batch_size``, ``world_size``, ``lr``. openjepa's own training checkpoints share that layout and add ``config``,
``step`` and ``rng``; every function here accepts both (and a run folder, for its latest checkpoint).

The work is done below this package, so that evaluation and training read released files too:
:mod:`openjepa.pretrained` builds models from any checkpoint (reading a released file's architecture off its
weights), :mod:`openjepa.resume_state` checks its optimizer state for resuming. This module is the
public face of those functions for released weights, and records their licence.
"""

from __future__ import annotations

from ..checkpoint import OFFICIAL_LICENSE, OPENJEPA_LICENSE, is_official_checkpoint, read_checkpoint
from ..ijepa import IJEPA
from ..models.vit import VisionTransformer
from ..pretrained import CheckpointLike, encoder_from_state, model_from_state
from ..resume_state import load_optimizer_state, resumable_state

__all__ = ["OFFICIAL_LICENSE", "OPENJEPA_LICENSE", "is_official_checkpoint", "load_official", "load_official_encoder",
           "load_optimizer_state", "official_to_training_state"]


def load_official(path: CheckpointLike, img_size: int | None = None, num_heads: int | None = None) -> IJEPA:
    """Build the I-JEPA model of a released checkpoint and load its three networks (``strict=True``).

    The architecture is read from the weights' shapes (see :mod:`openjepa.arch_from_weights`); the number of
    heads, which no shape records, comes from the preset of the same width unless ``num_heads`` is given. An
    openjepa training checkpoint works too (its recorded config is used).

    ``img_size`` builds the model for another resolution: the position embeddings of the encoders and the
    predictor are resampled bicubically from the trained grid, as pretrained weights are usually adapted (they
    are the embeddings the network was trained with; regenerating sin-cos tables would give slightly different
    ones at the same positions).

    >>> model = load_official("IN1K-vit.h.14-300e.pth.tar")          # doctest: +SKIP
    >>> features = model.target_encoder(images)                        # doctest: +SKIP
    """
    return model_from_state(*read_checkpoint(path), img_size, num_heads)


def load_official_encoder(path: CheckpointLike, which: str = "target", img_size: int | None = None,
                          num_heads: int | None = None) -> VisionTransformer:
    """One encoder of a released (or openjepa) checkpoint: ``target`` (the EMA encoder that the paper evaluates)
    or ``context``. Needs no predictor in the file. ``img_size`` as for :func:`load_official`."""
    return encoder_from_state(*read_checkpoint(path), which, img_size, num_heads)


def official_to_training_state(checkpoint: CheckpointLike, img_size: int | None = None,
                               num_heads: int | None = None) -> dict:
    """Turn a released checkpoint (a path or its loaded dict) into what openjepa's trainer resumes from; the
    returned dict's contract is :func:`openjepa.resume_state.resumable_state`'s."""
    return resumable_state(*read_checkpoint(checkpoint), img_size, num_heads)
