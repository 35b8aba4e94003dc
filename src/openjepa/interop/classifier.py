"""Fine-tuned classifiers out of openjepa: Hugging Face ``IJepaForImageClassification`` and timm's ViT with its head.

A :class:`~openjepa.models.ViTClassifier` is the encoder plus ``head(mean of the final-normed patch tokens)``,
which is exactly ``IJepaForImageClassification`` (``classifier(last_hidden_state.mean(1))``) and timm's
``VisionTransformer(class_token=False, global_pool="avg", fc_norm=False, num_classes=C)``. Key layouts::

    transformers: ijepa.<IJepaModel keys, see hf.py>   classifier.weight  classifier.bias
    timm:         <the encoder's own names, see timm.py> head.weight        head.bias

The class names travel along: ``id2label`` / ``label2id`` in the transformers ``config.json``, ``label_names`` in
timm's ``pretrained_cfg``. The encoder's part of each format (keys, config, reading the folder) is hf.py's and
timm.py's; this module adds the head.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_strict
from ..errors import CheckpointError
from ..models.classifier import ViTClassifier
from ..pretrained import ClassifierInfo, build_for_loading, read_classifier
from .export_files import write_export, write_json
from .export_source import float32_state
from .hf import (
    encoder_for,
    from_hf_state_dict,
    hf_config,
    installed_layout,
    preprocessor_config,
    read_hf_folder,
    to_hf_state_dict,
)
from .provenance import ExportInfo, model_card
from .timm import from_timm_state_dict, read_timm_folder, timm_arch, timm_config, to_timm_state_dict

ClassifierSource = str | os.PathLike | tuple[ViTClassifier, ClassifierInfo]

HF_USAGE = """from transformers import AutoImageProcessor, IJepaForImageClassification
processor = AutoImageProcessor.from_pretrained("THIS_FOLDER")
model = IJepaForImageClassification.from_pretrained("THIS_FOLDER")
logits = model(**processor(images, return_tensors="pt")).logits
labels = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]"""

TIMM_USAGE = """import json, timm
from safetensors.torch import load_file
cfg = json.load(open("THIS_FOLDER/config.json"))
model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
model.load_state_dict(load_file("THIS_FOLDER/model.safetensors"))
logits = model(images)   # class names: cfg["pretrained_cfg"]["label_names"]"""


def _resolve(source: ClassifierSource) -> tuple[ViTClassifier, ClassifierInfo]:
    model, info = source if isinstance(source, tuple) else read_classifier(source)
    if len(info.classes) != model.num_classes:
        raise CheckpointError(f"{len(info.classes)} class names for a {model.num_classes}-class classifier")
    return model, info


def classifier_export_info(info: ClassifierInfo) -> ExportInfo:
    """What an export of the classifier (or of its encoder) records about its weights."""
    return ExportInfo(mean=list(info.mean), std=list(info.std), license=info.license, source=info.source,
                      which="target", dataset=info.dataset)


def _card(info: ClassifierInfo, library: str, usage: str) -> str:
    start = f"fine-tuned from {info.init}" if info.init else "trained from random initialisation"
    about = (f"A ViT {start} by openjepa{' on ' + info.dataset if info.dataset else ''}: a linear head on the "
             f"average of the final-normed patch tokens. Classes: {', '.join(info.classes)}.")
    return model_card(classifier_export_info(info), library, usage, "I-JEPA image classifier", about,
                      ("image-classification",))


def _with_head(encoder_state: dict[str, torch.Tensor], head: dict[str, torch.Tensor], prefix: str,
               head_prefix: str) -> dict[str, torch.Tensor]:
    """Encoder weights under ``prefix`` and the head's ``weight`` / ``bias`` under ``head_prefix``."""
    return {**{prefix + k: v for k, v in encoder_state.items()},
            **{head_prefix + k: head[k] for k in ("weight", "bias")}}


def _classifier(arch: dict[str, Any], encoder_state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                head_prefix: str, directory: Path) -> ViTClassifier:
    """Our classifier (eval mode) from a folder's encoder weights (our names) and its head (``head_prefix``)."""
    if f"{head_prefix}weight" not in weights:
        raise CheckpointError(f"{directory} holds no classifier head ({head_prefix}weight): an encoder, not a "
                              f"classifier")
    num_classes = weights[f"{head_prefix}weight"].shape[0]
    model = build_for_loading(lambda: ViTClassifier(encoder_for(arch, directory), num_classes))
    head = {k: weights[f"{head_prefix}{k}"] for k in ("weight", "bias")}
    load_strict(model, _with_head(encoder_state, head, "encoder.", "head."), "classifier", str(directory),
                assign=True)
    return model.eval()


def to_hf_classifier_state_dict(model: ViTClassifier, layout: str = "v5") -> dict[str, torch.Tensor]:
    """The classifier's weights in the ``IJepaForImageClassification`` key layout."""
    encoder = to_hf_state_dict(float32_state(model.encoder), layout)
    return _with_head(encoder, float32_state(model.head), "ijepa.", "classifier.")


def hf_classifier_config(model: ViTClassifier, classes: list[str]) -> dict[str, Any]:
    """``config.json`` of ``IJepaForImageClassification`` (the encoder's ``IJepaConfig`` plus the labels)."""
    config = hf_config(model.encoder)
    config["architectures"] = ["IJepaForImageClassification"]
    config["id2label"] = {str(i): name for i, name in enumerate(classes)}
    config["label2id"] = {name: i for i, name in enumerate(classes)}
    return config


def export_hf_classifier(source: ClassifierSource, out_dir: str | os.PathLike, layout: str = "auto") -> Path:
    """Write a folder that ``transformers.IJepaForImageClassification.from_pretrained`` loads offline, giving the
    classifier's logits: ``config.json`` (with ``id2label``), ``model.safetensors``, ``preprocessor_config.json``
    (the fine-tuning normalisation) and a ``README.md`` with the licence. ``source``: a fine-tuning run folder or
    checkpoint, or ``(model, info)``."""
    model, info = _resolve(source)
    layout = installed_layout() if layout == "auto" else layout
    out = write_export(out_dir, to_hf_classifier_state_dict(model, layout), hf_classifier_config(model, info.classes))
    write_json(preprocessor_config(model.encoder, classifier_export_info(info)), out / "preprocessor_config.json")
    (out / "README.md").write_text(_card(info, "transformers", HF_USAGE))
    return out


def load_hf_classifier(path: str | os.PathLike) -> ViTClassifier:
    """Our classifier from an ``IJepaForImageClassification`` folder (eval mode): the same logits."""
    directory, arch, weights = read_hf_folder(path)
    return _classifier(arch, from_hf_state_dict(weights), weights, "classifier.", directory)


def export_timm_classifier(source: ClassifierSource, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (timm's ViT layout with ``head.*``), ``config.json`` (``create_model``
    arguments with ``num_classes``, class names in ``pretrained_cfg.label_names``) and a README."""
    model, info = _resolve(source)
    config = timm_config(model.encoder, classifier_export_info(info))
    config["num_classes"] = config["model_args"]["num_classes"] = config["pretrained_cfg"]["num_classes"] = \
        model.num_classes
    config["pretrained_cfg"]["label_names"] = list(info.classes)
    config["openjepa"]["classifier"] = True
    weights = _with_head(to_timm_state_dict(float32_state(model.encoder)), float32_state(model.head), "", "head.")
    out = write_export(out_dir, weights, config)
    (out / "README.md").write_text(_card(info, "timm", TIMM_USAGE))
    return out


def load_timm_classifier(path: str | os.PathLike) -> ViTClassifier:
    """Our classifier from a timm ViT folder with a head (as :func:`export_timm_classifier` writes), eval mode."""
    directory, args, weights = read_timm_folder(path)
    if args.get("global_pool") != "avg":
        raise CheckpointError(f"{directory} is not a timm ViT of the I-JEPA classifier structure (class_token=False, "
                              f"global_pool='avg', fc_norm=False)")
    return _classifier(timm_arch(args), from_timm_state_dict(weights), weights, "head.", directory)
