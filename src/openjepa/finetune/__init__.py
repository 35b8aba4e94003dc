"""Fine-tuning: a pretrained I-JEPA encoder plus a linear head on its average-pooled output, trained end to end on
labelled images (AdamW with layer-wise learning-rate decay, warm-up + cosine, drop-path, label smoothing, light
augmentation), the model chosen on held-out training images and scored once on the test split.

>>> from openjepa.finetune import finetune, load_finetune_config                        # doctest: +SKIP
>>> from openjepa.interop import load_pretrained                                         # doctest: +SKIP
>>> result = finetune(load_finetune_config("digits"), load_pretrained("runs/digits"))   # doctest: +SKIP
>>> model, info = read_classifier(result.run_dir)                                        # doctest: +SKIP

Settings and protocol: docs/downstream.md. The classifier's checkpoint is read back by the one loader of trained
models, :mod:`openjepa.pretrained` (``read_classifier``, also exported here).
"""

from ..checkpoint import is_classifier_checkpoint
from ..pretrained import ClassifierInfo, PretrainedEncoder, classifier_from_state, read_classifier
from ..run_folder import FINETUNE_BEST as BEST
from ..run_folder import FINETUNE_LATEST as LATEST
from .checkpoints import classifier_record
from .config import (
    FinetuneConfig,
    FinetuneOptimConfig,
    FinetuneSettings,
    finetune_config_from_dict,
    finetune_recipe_names,
    load_finetune_config,
)
from .data import Splits, choose_splits
from .draws import StoppedDraw, finetune_draws, with_low_shot
from .optim import layer_id, lr_scale, make_finetune_optimizer, param_groups
from .trainer import FinetuneDiverged, FineTuner, FinetuneResult, Scores, finetune, score_classifier

__all__ = [
    "BEST",
    "LATEST",
    "ClassifierInfo",
    "FineTuner",
    "FinetuneConfig",
    "FinetuneDiverged",
    "FinetuneOptimConfig",
    "FinetuneResult",
    "FinetuneSettings",
    "PretrainedEncoder",
    "Scores",
    "Splits",
    "StoppedDraw",
    "choose_splits",
    "classifier_from_state",
    "classifier_record",
    "finetune",
    "finetune_config_from_dict",
    "finetune_draws",
    "finetune_recipe_names",
    "is_classifier_checkpoint",
    "layer_id",
    "load_finetune_config",
    "lr_scale",
    "make_finetune_optimizer",
    "param_groups",
    "read_classifier",
    "score_classifier",
    "with_low_shot",
]
