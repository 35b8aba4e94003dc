"""Fine-tuning checkpoints: what they hold, and reading a fine-tuned classifier back.

A run folder holds ``finetune-latest.pth.tar`` (everything needed to resume exactly: weights, optimizer, scaler,
random state, position, the model-selection record) and ``finetune-best.pth.tar`` (the classifier with the best
held-out accuracy so far, without optimizer state: what ``openjepa predict`` and ``openjepa export`` read). Both
load with ``torch.load(weights_only=True)`` and carry ``kind: openjepa-finetune``, the architecture, the class
names, the input normalisation, and the licence and source of the pretrained weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import CheckpointError, load_checkpoint, load_weights
from ..models.classifier import ViTClassifier

KIND = "openjepa-finetune"
FORMAT_VERSION = 1
LATEST = "finetune-latest.pth.tar"
BEST = "finetune-best.pth.tar"
FINAL = "final.json"
SPLITS = "splits.json"


@dataclass
class ClassifierInfo:
    """What a fine-tuned classifier needs besides its weights: class names (column ``j`` of the logits is
    ``classes[j]``), the input normalisation, and the provenance of the weights."""

    classes: list[str]
    mean: list[float]
    std: list[float]
    license: str | None = None
    source: str = "openjepa"
    init: str | None = None  # the pretrained encoder it started from (None: random initialisation)
    dataset: str | None = None
    epoch: int | None = None  # epochs completed when these weights were saved

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def classifier_record(model: ViTClassifier, info: ClassifierInfo) -> dict[str, Any]:
    """The entries every fine-tuning checkpoint holds: the weights, their architecture and :class:`ClassifierInfo`."""
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "openjepa_version": __version__,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": model.arch(),
        "info": info.to_dict(),
    }


def is_finetune_checkpoint(state: dict[str, Any]) -> bool:
    return state.get("kind") == KIND


def is_finetune_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a fine-tuning run folder or checkpoint file. Files are memory-mapped, not read: the
    question is cheap even for a large checkpoint of another kind."""
    path = Path(path)
    if path.is_dir():
        return (path / BEST).is_file()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable, not a zip checkpoint...: not one of ours (others say why)
        return False
    return isinstance(state, dict) and is_finetune_checkpoint(state)


def finetune_file(path: str | os.PathLike, name: str = BEST) -> Path:
    """A fine-tuning checkpoint file, or the ``name`` file of a fine-tuning run folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is a folder without {name}: pass a fine-tuning run folder or checkpoint")
        return path / name
    return path


def classifier_from_state(state: dict[str, Any], origin: str) -> tuple[ViTClassifier, ClassifierInfo]:
    """The classifier (eval mode, CPU) and its info from a loaded fine-tuning checkpoint."""
    if not is_finetune_checkpoint(state):
        raise CheckpointError(f"{origin} is not a fine-tuning checkpoint (written by `openjepa finetune`); for an "
                              f"I-JEPA checkpoint use `openjepa eval` or `openjepa export`")
    if int(state.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{origin} was written by a newer openjepa; upgrade openjepa to read it")
    try:
        model = ViTClassifier.from_arch(state["arch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{origin} describes an invalid classifier architecture: {exc}") from exc
    load_weights(model, state["model"], "classifier")
    return model.eval(), ClassifierInfo(**state["info"])


def read_classifier(path: str | os.PathLike) -> tuple[ViTClassifier, ClassifierInfo]:
    """The fine-tuned classifier of a run folder (its best checkpoint) or of a fine-tuning checkpoint file.

    >>> model, info = read_classifier("runs/digits-finetune")       # doctest: +SKIP
    >>> info.classes[model(images).argmax(1)[0]]                      # doctest: +SKIP
    """
    file = finetune_file(path)
    return classifier_from_state(load_checkpoint(file), str(file))
