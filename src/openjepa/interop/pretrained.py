"""One entry point for "an encoder to build on downstream", whatever holds it: an openjepa run folder or checkpoint,
a released I-JEPA ``.pth.tar``, a fine-tuned classifier (its folder or checkpoint), or an openjepa / Hugging Face
/ timm model folder.

A thin layer: checkpoints and run folders are read by the one loader of trained models
(:func:`openjepa.pretrained.read_encoder`), their licence and normalisation by :mod:`.provenance`; model folders by
this package's own readers (:mod:`.native`, :mod:`.hf`, :mod:`.timm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import CheckpointError
from ..pretrained import LoadedEncoder, PretrainedEncoder, read_encoder
from ..run_folder import MODEL_FILES
from .export_files import CONFIG, read_json
from .hf import SPDX_CASE, load_hf, read_hf_info
from .native import FORMAT, load_exported, read_export_info
from .provenance import info_from_checkpoint
from .timm import load_timm

KINDS = ("an openjepa run folder or checkpoint", "a released I-JEPA .pth.tar", "a fine-tuning run folder or "
         "checkpoint", "an openjepa, Hugging Face or timm model folder")


def _from_checkpoint(loaded: LoadedEncoder) -> PretrainedEncoder:
    origin, classifier = str(loaded.path), loaded.classifier
    if classifier is not None:
        return PretrainedEncoder(loaded.encoder, classifier.mean, classifier.std, classifier.license,
                                 classifier.source, origin, {"dataset": classifier.dataset})
    info = info_from_checkpoint(loaded.metadata, loaded.which, loaded.encoder.in_chans)
    data = (loaded.run_config or {}).get("data")
    return PretrainedEncoder(loaded.encoder, info.mean, info.std, info.license, info.source, origin,
                             dict(data) if isinstance(data, Mapping) else None)


def _from_folder(folder: Path) -> PretrainedEncoder:
    config = read_json(folder / CONFIG, "a model folder")
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
        raise CheckpointError(f"{folder / CONFIG} describes no model openjepa reads (not an openjepa export, a "
                              f"transformers I-JEPA model or a timm ViT)")
    return PretrainedEncoder(encoder, info.mean, info.std, info.license, info.source, str(folder),
                             {"dataset": info.dataset} if info.dataset else None)


def load_pretrained(source: str | os.PathLike, which: str = "target") -> PretrainedEncoder:
    """The encoder held by ``source`` (in eval mode, on the CPU) with its input normalisation, licence and
    provenance: a run folder or checkpoint file of pretraining (``which``: the ``target`` EMA encoder or the
    ``context`` one) or of fine-tuning (the classifier's encoder), a released I-JEPA file, or a folder written by
    ``openjepa export`` / ``transformers`` (``IJepaModel`` or ``IJepaForImageClassification``) / timm.

    >>> pretrained = load_pretrained("runs/digits")     # .encoder, .mean, .std, .license ...   # doctest: +SKIP
    """
    path = Path(source)
    if path.is_dir() and not any((path / name).is_file() for name in MODEL_FILES):
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"{path} is a folder without a checkpoint ({', '.join(MODEL_FILES)}) or a "
                                  f"{CONFIG}; pass {', '.join(KINDS[:-1])} or {KINDS[-1]}")
        return _from_folder(path)
    return _from_checkpoint(read_encoder(path, which))
