"""Fine-tuned classifiers out of openjepa: Hugging Face ``IJepaForImageClassification`` and timm's ViT with its head.

A :class:`~openjepa.models.ViTClassifier` is the encoder plus ``head(mean of the final-normed patch tokens)``,
which is exactly ``IJepaForImageClassification`` (``classifier(last_hidden_state.mean(1))``) and timm's
``VisionTransformer(class_token=False, global_pool="avg", fc_norm=False, num_classes=C)``. Key layouts::

    transformers: ijepa.<IJepaModel keys, see hf.py>   classifier.weight  classifier.bias
    timm:         <the encoder's own names, see timm.py> head.weight        head.bias

The class names travel along: ``id2label`` / ``label2id`` in the transformers ``config.json``, ``label_names`` in
timm's ``pretrained_cfg``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..finetune.checkpoint import ClassifierInfo, read_classifier
from ..models.classifier import ViTClassifier
from ..models.layers import LAYER_NORM_EPS
from ..models.vit import VisionTransformer
from .hf import arch_from_hf_config, from_hf_state_dict, hf_config, installed_layout, preprocessor_config, to_hf_state_dict
from .provenance import ExportInfo
from .timm import from_timm_state_dict, timm_config, to_timm_state_dict
from .weights import build_for_loading, load_safetensors, load_strict, read_json, save_safetensors, write_json

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
    if isinstance(source, tuple):
        return source
    return read_classifier(source)


def _export_info(info: ClassifierInfo) -> ExportInfo:
    return ExportInfo(mean=list(info.mean), std=list(info.std), license=info.license, source=info.source,
                      which="target", dataset=info.dataset)


def _card(info: ClassifierInfo, library: str, usage: str) -> str:
    license_line = f"license: {info.license.lower()}\n" if info.license else ""
    start = f"fine-tuned from {info.init}" if info.init else "trained from random initialisation"
    return (f"---\n{license_line}library_name: {library}\ntags:\n- i-jepa\n- openjepa\n- image-classification\n---\n\n"
            f"# I-JEPA image classifier\n\nA ViT {start} by openjepa"
            f"{' on ' + info.dataset if info.dataset else ''}: a linear head on the average of the final-normed "
            f"patch tokens. Classes: {', '.join(info.classes)}. Licence: {info.license or 'unknown'}.\n\n"
            f"```python\n{usage}\n```\n")


def _float32(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in module.state_dict().items()}


def to_hf_classifier_state_dict(model: ViTClassifier, layout: str = "v5") -> dict[str, torch.Tensor]:
    """The classifier's weights in the ``IJepaForImageClassification`` key layout."""
    state = {f"ijepa.{k}": v for k, v in to_hf_state_dict(_float32(model.encoder), layout).items()}
    head = _float32(model.head)
    state.update({"classifier.weight": head["weight"], "classifier.bias": head["bias"]})
    return state


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
    if len(info.classes) != model.num_classes:
        raise CheckpointError(f"{len(info.classes)} class names for a {model.num_classes}-class classifier")
    layout = installed_layout() if layout == "auto" else layout
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(to_hf_classifier_state_dict(model, layout), out / "model.safetensors")
    write_json(hf_classifier_config(model, info.classes), out / "config.json")
    write_json(preprocessor_config(model.encoder, _export_info(info)), out / "preprocessor_config.json")
    (out / "README.md").write_text(_card(info, "transformers", HF_USAGE))
    return out


def load_hf_classifier(path: str | os.PathLike) -> ViTClassifier:
    """Our classifier from an ``IJepaForImageClassification`` folder (eval mode): the same logits."""
    directory = Path(path)
    config = read_json(directory / "config.json", "a transformers model")
    weights = load_safetensors(directory / "model.safetensors")
    if "classifier.weight" not in weights:
        raise CheckpointError(f"{directory} holds no classifier weights (an IJepaModel, not a classifier)")
    encoder_state = from_hf_state_dict(weights)
    arch_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                 "patch_size", "num_channels", "qkv_bias", "layer_norm_eps")
    config_like = {"model_type": "ijepa", **{k: config[k] for k in arch_keys if k in config}}
    arch = arch_from_hf_config(config_like, str(directory))
    model = build_for_loading(lambda: ViTClassifier(VisionTransformer(**arch), weights["classifier.weight"].shape[0]))
    state = {f"encoder.{k}": v for k, v in encoder_state.items()}
    state.update({"head.weight": weights["classifier.weight"], "head.bias": weights["classifier.bias"]})
    load_strict(model, state, "classifier", str(directory), assign=True)
    return model.eval()


def export_timm_classifier(source: ClassifierSource, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (timm's ViT layout with ``head.*``), ``config.json`` (``create_model``
    arguments with ``num_classes``, class names in ``pretrained_cfg.label_names``) and a README."""
    model, info = _resolve(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = to_timm_state_dict(_float32(model.encoder))
    head = _float32(model.head)
    state.update({"head.weight": head["weight"], "head.bias": head["bias"]})
    config = timm_config(model.encoder, _export_info(info))
    config["num_classes"] = config["model_args"]["num_classes"] = config["pretrained_cfg"]["num_classes"] = \
        model.num_classes
    config["pretrained_cfg"]["label_names"] = list(info.classes)
    config["openjepa"]["classifier"] = True
    save_safetensors(state, out / "model.safetensors")
    write_json(config, out / "config.json")
    (out / "README.md").write_text(_card(info, "timm", TIMM_USAGE))
    return out


def load_timm_classifier(path: str | os.PathLike) -> ViTClassifier:
    """Our classifier from a timm ViT folder with a head (as :func:`export_timm_classifier` writes), eval mode."""
    directory = Path(path)
    config = read_json(directory / "config.json", "a timm model folder")
    args = config.get("model_args") or {}
    if args.get("class_token", True) or args.get("fc_norm", False) or args.get("global_pool") != "avg":
        raise CheckpointError(f"{directory} is not a timm ViT of the I-JEPA classifier structure (class_token=False, "
                              f"global_pool='avg', fc_norm=False)")
    weights_file = directory / "model.safetensors"
    weights = load_safetensors(weights_file) if weights_file.is_file() else load_checkpoint(
        directory / "pytorch_model.bin")
    if "head.weight" not in weights:
        raise CheckpointError(f"{directory} holds no head weights (a timm encoder, not a classifier)")
    arch = {k: args[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                 "mlp_ratio", "qkv_bias") if k in args}
    model = build_for_loading(lambda: ViTClassifier(VisionTransformer(**arch, norm_eps=LAYER_NORM_EPS),
                                                    weights["head.weight"].shape[0]))
    state = {f"encoder.{k}": v for k, v in from_timm_state_dict(weights).items()}
    state.update({"head.weight": weights["head.weight"], "head.bias": weights["head.bias"]})
    load_strict(model, state, "classifier", str(directory), assign=True)
    return model.eval()
