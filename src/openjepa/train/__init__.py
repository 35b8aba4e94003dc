"""Pretraining: ``pretrain(config)`` runs I-JEPA on CPU, one GPU or under torchrun (see :mod:`.trainer`)."""

from ..config_sections import OptimConfig, TrainConfig
from .trainer import PretrainResult, Trainer, TrainingDiverged, pretrain

__all__ = ["OptimConfig", "PretrainResult", "TrainConfig", "Trainer", "TrainingDiverged", "pretrain"]
