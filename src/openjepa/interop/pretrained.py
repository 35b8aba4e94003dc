"""One entry point for "an encoder to use downstream", whatever holds it: an openjepa run folder or checkpoint, a
released I-JEPA ``.pth.tar``, an openjepa / Hugging Face / timm export folder, or a fine-tuned classifier."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..checkpoint import CheckpointError, load_checkpoint
from ..finetune.checkpoint import BEST, classifier_from_state, is_finetune_checkpoint
from ..finetune.config import PretrainedEncoder
from ..train.state import LATEST
from .hf import SPDX_CASE, load_hf, read_hf_info
from .native import FORMAT, load_exported, read_export_info
from .official import encoder_from_state, read_checkpoint
from .provenance import info_from_checkpoint
from .timm import load_timm
from .weights import read_json

KINDS = ("an openjepa run folder or checkpoint", "a released I-JEPA .pth.tar", "a fine-tuning run folder or "
         "checkpoint", "an openjepa, Hugging Face or timm model folder")


def _from_state(state: dict, origin: str, which: str) -> PretrainedEncoder:
    if is_finetune_checkpoint(state):
        model, info = classifier_from_state(state, origin)
        return PretrainedEncoder(model.encoder, info.mean, info.std, info.license, info.source, origin,
                                 {"dataset": info.dataset})
    read_checkpoint(state)  # an I-JEPA checkpoint, or a clear error
    encoder = encoder_from_state(state, origin, which)
    info = info_from_checkpoint(state, which, encoder.in_chans)
    config = state.get("config") if isinstance(state.get("config"), Mapping) else {}
    data = dict(config["data"]) if isinstance(config.get("data"), Mapping) else None
    return PretrainedEncoder(encoder, info.mean, info.std, info.license, info.source, origin, data)


def _from_folder(folder: Path) -> PretrainedEncoder:
    config = read_json(folder / "config.json", "a model folder")
    if config.get("format") == FORMAT:
        info, encoder = read_export_info(folder), load_exported(folder)
    elif config.get("model_type") == "ijepa":
        info, encoder = read_hf_info(folder), load_hf(folder)
    elif isinstance(config.get("model_args"), Mapping):
        encoder = load_timm(folder)
        pretrained_cfg = config.get("pretrained_cfg") or {}
        license_ = pretrained_cfg.get("license")
        return PretrainedEncoder(encoder, pretrained_cfg.get("mean"), pretrained_cfg.get("std"),
                                 SPDX_CASE.get(license_, license_), "timm", str(folder))
    else:
        raise CheckpointError(f"{folder / 'config.json'} describes no model openjepa reads (not an openjepa export, "
                              f"a transformers I-JEPA model or a timm ViT)")
    return PretrainedEncoder(encoder, info.mean, info.std, info.license, info.source, str(folder),
                             {"dataset": info.dataset} if info.dataset else None)


def load_pretrained(source: str | os.PathLike, which: str = "target") -> PretrainedEncoder:
    """The encoder held by ``source`` (in eval mode, on the CPU) with its input normalisation, licence and
    provenance: a run folder (its latest checkpoint) or checkpoint file of pretraining (``which``: the ``target``
    EMA encoder or the ``context`` one) or of fine-tuning (the classifier's encoder), a released I-JEPA file, or a
    folder written by ``openjepa export`` / ``transformers`` (``IJepaModel`` or ``IJepaForImageClassification``)
    / timm.

    >>> pretrained = load_pretrained("runs/digits")     # .encoder, .mean, .std, .license ...   # doctest: +SKIP
    """
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass {', '.join(KINDS[:-1])} or {KINDS[-1]}")
    if path.is_dir():
        for name in (LATEST, BEST):
            if (path / name).is_file():
                return _from_state(load_checkpoint(path / name), str(path / name), which)
        if (path / "config.json").is_file():
            return _from_folder(path)
        raise CheckpointError(f"{path} is a folder without a checkpoint ({LATEST}, {BEST}) or a config.json; pass "
                              f"{', '.join(KINDS[:-1])} or {KINDS[-1]}")
    return _from_state(load_checkpoint(path), str(path), which)
