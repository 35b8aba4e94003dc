"""What a fine-tuning checkpoint holds, and how a fine-tuning run is put back exactly where it stopped.

A fine-tuning run folder holds ``finetune-latest.pth.tar`` (everything an exact resume needs: the network being
trained, optimizer, scaler, random state, position, the model-selection record) and ``finetune-best.pth.tar``
(the classifier with the best held-out accuracy so far, without optimizer state: what ``openjepa predict`` and
``openjepa export`` read). Both load with ``torch.load(weights_only=True)`` and carry ``kind: openjepa-finetune``,
the classifier's architecture and weights (the plain encoder + linear head, the head's normalisation folded in),
and its :class:`~openjepa.pretrained.ClassifierInfo`: class names, input normalisation, licence and source of the
pretrained weights. :func:`openjepa.pretrained.read_classifier` reads them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    CLASSIFIER_FORMAT_VERSION,
    CLASSIFIER_KIND,
    CheckpointError,
    is_classifier_checkpoint,
    load_checkpoint,
    load_strict,
)
from ..models.classifier import ViTClassifier
from ..pretrained import ClassifierInfo
from ..run_folder import FINETUNE_LATEST
from ..train.checkpoints import Position, restore_rng_state, rng_state
from ..version import __version__
from .head import FinetuneNet


def classifier_record(model: ViTClassifier, info: ClassifierInfo) -> dict[str, Any]:
    """The entries every fine-tuning checkpoint holds: the weights, their architecture and :class:`ClassifierInfo`."""
    return {
        "kind": CLASSIFIER_KIND,
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "openjepa_version": __version__,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": model.arch(),
        "info": info.to_dict(),
    }


def finetune_state(net: FinetuneNet, info: ClassifierInfo, position: Position, config: dict[str, Any],
                   best: dict[str, Any] | None, optimizer: torch.optim.Optimizer | None = None,
                   scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """A fine-tuning checkpoint: the classifier ``net`` computes (its head normalisation folded in), the run's
    position, config and model-selection record ``best``; with ``optimizer`` also what an exact resume needs."""
    info.epoch = position.epoch
    state = {**classifier_record(net.folded(), info), "config": config, "epoch": position.epoch,
             "step": position.global_step, "best": best}
    if optimizer is not None:
        state.update(net=net.state_dict(), opt=optimizer.state_dict(),
                     scaler=scaler.state_dict() if scaler is not None else None,
                     step_in_epoch=position.step_in_epoch, rng=rng_state())
    return state


def read_resume_state(path: Path) -> dict[str, Any]:
    """A fine-tuning run's latest checkpoint, checked to be one."""
    state = load_checkpoint(path)
    if not is_classifier_checkpoint(state) or "opt" not in state or "net" not in state:
        raise CheckpointError(f"{path} is not a fine-tuning training checkpoint ({FINETUNE_LATEST} of a fine-tuning "
                              f"run folder); to fine-tune a pretrained encoder, pass it as the init instead")
    return state


def restore_finetune_state(state: dict[str, Any], origin: Path, net: FinetuneNet, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler | None) -> tuple[Position, dict[str, Any] | None]:
    """Load the network being trained, optimizer, scaler and random state of :func:`read_resume_state`'s
    checkpoint; return where to continue and the model-selection record."""
    load_strict(net, state["net"], "classifier being trained", str(origin))
    try:
        optimizer.load_state_dict(state["opt"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the optimizer state in {origin} does not fit this model ({exc})") from exc
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state.get("rng"))
    return Position(int(state["epoch"]), int(state["step_in_epoch"]), int(state["step"])), state.get("best")
