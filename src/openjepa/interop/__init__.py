"""Interoperability: the released I-JEPA checkpoints, Hugging Face transformers, timm, and openjepa's own export.

* :func:`load_official` / :func:`load_official_encoder`: a released ``.pth.tar`` (or an openjepa training
  checkpoint) as an :class:`~openjepa.IJEPA` model or one encoder, architecture read from the weights;
  :func:`official_to_training_state` + :func:`load_optimizer_state` resume training from one.
* :func:`export_openjepa` / :func:`load_exported`: ``model.safetensors`` + ``config.json`` with the
  normalisation, licence and provenance.
* :func:`export_hf` / :func:`load_hf`: folders that ``transformers.IJepaModel.from_pretrained`` loads.
* :func:`export_timm` / :func:`load_timm`: timm's ``vit_*`` layout plus the ``create_model`` arguments.
* :func:`export_hf_classifier` / :func:`export_timm_classifier`: a fine-tuned classifier as
  ``IJepaForImageClassification`` or a timm ViT with its head (and ``load_*_classifier`` back).
* :func:`load_pretrained`: the encoder of any of the above (or of a fine-tuned classifier), with its
  normalisation and licence, for fine-tuning.

Nothing here unpickles arbitrary objects: checkpoints load with ``weights_only=True``, exports are safetensors.
"""

from ..arch_from_weights import encoder_arch, model_config_from_weights, predictor_arch
from ..pretrained import encoder_at
from .classifier import export_hf_classifier, export_timm_classifier, load_hf_classifier, load_timm_classifier
from .hf import export_hf, from_hf_state_dict, installed_layout, load_hf, read_hf_info, to_hf_state_dict
from .native import export_openjepa, load_exported, read_export_info
from .official import (
    OFFICIAL_LICENSE,
    OPENJEPA_LICENSE,
    is_official_checkpoint,
    load_official,
    load_official_encoder,
    load_optimizer_state,
    official_to_training_state,
)
from .pretrained import load_pretrained
from .provenance import ExportInfo
from .timm import export_timm, from_timm_state_dict, load_timm, timm_model_args, to_timm_state_dict

FORMATS = ("openjepa", "hf", "timm")

__all__ = [
    "FORMATS",
    "OFFICIAL_LICENSE",
    "OPENJEPA_LICENSE",
    "ExportInfo",
    "encoder_arch",
    "encoder_at",
    "export_hf",
    "export_hf_classifier",
    "export_openjepa",
    "export_timm",
    "export_timm_classifier",
    "from_hf_state_dict",
    "from_timm_state_dict",
    "installed_layout",
    "is_official_checkpoint",
    "load_exported",
    "load_hf",
    "load_hf_classifier",
    "load_official",
    "load_official_encoder",
    "load_pretrained",
    "load_optimizer_state",
    "load_timm",
    "load_timm_classifier",
    "model_config_from_weights",
    "official_to_training_state",
    "predictor_arch",
    "read_export_info",
    "read_hf_info",
    "timm_model_args",
    "to_hf_state_dict",
    "to_timm_state_dict",
]
