"""Trained models from a run folder or a checkpoint file: the one loader behind ``eval``, ``embed``, ``export``,
``convert``, ``viz``, ``finetune --init`` and ``predict``.

An openjepa checkpoint records its run config, from which the architecture is rebuilt; a released I-JEPA
``.pth.tar`` records none, so its architecture is read off the weights' shapes (:mod:`openjepa.arch_from_weights`).
A fine-tuned classifier's checkpoint (``openjepa finetune``) records the classifier's architecture and class names;
its encoder is read like any other (:func:`read_encoder`), the whole classifier by :func:`read_classifier`. Models
are built without random initialisation where possible and loaded strictly.

>>> encoder = load_encoder("runs/digits")  # a run's latest checkpoint, target encoder  # doctest: +SKIP
>>> trained = load_trained("IN1K-vit.h.14-300e.pth.tar")  # a released file: the whole model  # doctest: +SKIP
>>> classifier, info = read_classifier("runs/digits-finetune")  # its chosen classifier  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .arch_from_weights import encoder_arch, model_config_from_weights
from .checkpoint import (
    CLASSIFIER_FORMAT_VERSION,
    is_classifier_checkpoint,
    load_strict,
    read_checkpoint,
    strip_prefix,
)
from .checkpoint_writer import load_checkpoint_mmap
from .config import RunConfig, from_dict
from .errors import CheckpointError, ConfigError, UserError
from .ijepa import IJEPA, ModelConfig, build_ijepa
from .models.classifier import ViTClassifier
from .models.pos_embed import GridSize, resample_pos_embed
from .models.vit import VisionTransformer
from .run_folder import FINETUNE_BEST, checkpoint_in

ENCODERS = {"target": "target_encoder", "context": "encoder"}  # which encoder -> its checkpoint entry
NETWORKS = ("encoder", "predictor", "target_encoder")
TENSOR_ENTRIES = (*NETWORKS, "opt", "scaler", "rng", "model", "net")  # weights and optimizer state, not metadata
SHARED_SECTIONS = ("model", "data", "train")  # the sections of a fine-tuning config that a pretraining one has too
ENCODER_ONLY_HINT = ("its encoders alone load with openjepa.interop.load_official_encoder (or export them with "
                     "`openjepa export --checkpoint FILE`)")
CheckpointLike = str | os.PathLike | Mapping[str, Any]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


# -- building models whose weights come from a file ---------------------------------------------------------------
def build_for_loading(factory: Callable[[], ModuleT]) -> ModuleT:
    """Build a module whose weights are about to be replaced, without spending time initialising them: on the
    meta device (no memory, no random init; load it with ``assign=True``) when its constructor allows, else
    normally. For a ViT-H the random initialisation alone takes minutes on a laptop CPU."""
    try:
        with torch.device("meta"):
            return factory()
    except (NotImplementedError, RuntimeError):  # a constructor that reads tensor values cannot run on meta
        return factory()


def as_float32(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in float32 (the models train and export in float32; a no-op for float32 files)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def with_pos_embed_for(state_dict: Mapping[str, torch.Tensor], key: str, new_grid: GridSize) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose ``key`` position embeddings are resampled (bicubic) to ``new_grid``."""
    out = dict(state_dict)
    pos = out[key]
    side = int(round(pos.shape[1] ** 0.5))
    out[key] = resample_pos_embed(pos, new_grid, (side, side))
    return out


def check_img_size(img_size: int, patch_size: int) -> None:
    if img_size <= 0 or img_size % patch_size:
        raise UserError(
            f"img_size {img_size} is not a positive multiple of the patch size {patch_size}; use e.g. "
            f"{max(1, img_size // patch_size) * patch_size}"
        )


# -- what a checkpoint dict holds -----------------------------------------------------------------------------------
def encoder_state(state: Mapping[str, Any], which: str, origin: str) -> dict[str, torch.Tensor]:
    """The ``target`` (EMA) or ``context`` encoder weights, prefixes removed; falls back to the other encoder
    (with a warning) in a file that holds only one."""
    if which not in ENCODERS:
        raise UserError(f"which encoder: choose 'target' or 'context', not {which!r}")
    key = ENCODERS[which]
    other = ENCODERS["context" if which == "target" else "target"]
    if not isinstance(state.get(key), Mapping):
        warnings.warn(f"{origin} has no '{key}' weights; using its '{other}' weights instead", stacklevel=3)
        key = other
    return as_float32(strip_prefix(state[key]))


def recorded_model_config(state: Mapping[str, Any], origin: str) -> ModelConfig | None:
    """The model section an openjepa checkpoint records (None for a released one, which records none)."""
    recorded = state.get("config")
    if not (isinstance(recorded, Mapping) and isinstance(recorded.get("model"), Mapping)):
        return None
    try:
        return from_dict({"model": dict(recorded["model"])}).model
    except ConfigError as exc:
        raise CheckpointError(f"the model config recorded in {origin} is invalid: {exc}") from exc


def model_config_of(state: Mapping[str, Any], origin: str, num_heads: int | None = None) -> ModelConfig:
    """The model config recorded in an openjepa checkpoint, or the one read off a released file's weights."""
    cfg = recorded_model_config(state, origin)
    if cfg is not None:
        return replace(cfg, num_heads=num_heads) if num_heads else cfg
    encoder = encoder_state(state, "context", origin)
    encoder_arch(encoder, num_heads)  # first: a file of another model is reported as such
    if not isinstance(state.get("predictor"), Mapping):
        raise CheckpointError(f"{origin} has no 'predictor' weights, so a full I-JEPA model cannot be rebuilt "
                              f"from it; {ENCODER_ONLY_HINT}")
    return model_config_from_weights(encoder, strip_prefix(state["predictor"]), num_heads)


def config_and_weights(state: Mapping[str, Any], origin: str, img_size: int | None = None,
                       num_heads: int | None = None) -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]]]:
    """The model config (at ``img_size`` when given) and the three networks' float32 weights (prefixes removed,
    position embeddings resampled to that config's grid when it differs from the file's)."""
    cfg = model_config_of(state, origin, num_heads)
    if img_size is not None:
        check_img_size(img_size, cfg.patch_size)
        cfg = replace(cfg, img_size=img_size)
    if not isinstance(state.get("predictor"), Mapping):
        raise CheckpointError(f"{origin} has no 'predictor' weights; {ENCODER_ONLY_HINT}")
    grid = (cfg.img_size // cfg.patch_size,) * 2
    weights = {
        "encoder": with_pos_embed_for(encoder_state(state, "context", origin), "pos_embed", grid),
        "target_encoder": with_pos_embed_for(encoder_state(state, "target", origin), "pos_embed", grid),
        "predictor": with_pos_embed_for(as_float32(strip_prefix(state["predictor"])), "predictor_pos_embed", grid),
    }
    return cfg, weights


def metadata(state: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a checkpoint records besides the networks' and optimizer's tensors (config, epoch, licence...)."""
    return {k: v for k, v in state.items() if k not in TENSOR_ENTRIES}


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- from a checkpoint dict ------------------------------------------------------------------------------------------
def model_from_state(state: Mapping[str, Any], origin: str, img_size: int | None = None,
                     num_heads: int | None = None) -> IJEPA:
    """The whole I-JEPA model of a checkpoint dict already in memory (``origin`` names it in errors), loaded
    strictly; ``img_size`` rebuilds it for another resolution (position embeddings resampled bicubically)."""
    cfg, weights = config_and_weights(state, origin, img_size, num_heads)
    model = build_for_loading(lambda: build_ijepa(cfg))
    target = weights["target_encoder"]
    if any(a is b for a, b in zip(weights["encoder"].values(), target.values())):
        target = {k: v.clone() for k, v in target.items()}  # a file with one encoder: the networks must not share
    load_strict(model.encoder, weights["encoder"], "context encoder", origin, assign=True)
    load_strict(model.target_encoder, target, "target encoder", origin, assign=True)
    load_strict(model.predictor, weights["predictor"], "predictor", origin, assign=True)
    return model


def encoder_from_state(state: Mapping[str, Any], origin: str, which: str = "target", img_size: int | None = None,
                       num_heads: int | None = None) -> VisionTransformer:
    """One encoder of a checkpoint dict already in memory, in eval mode; needs no predictor in the file."""
    weights = encoder_state(state, which, origin)
    recorded = recorded_model_config(state, origin)
    if recorded is not None:
        arch = (replace(recorded, num_heads=num_heads) if num_heads else recorded).encoder_kwargs()
        arch.pop("drop_path_rate")
    else:
        arch = encoder_arch(weights, num_heads)
    if img_size is not None:
        check_img_size(img_size, arch["patch_size"])
        arch["img_size"] = img_size
        weights = with_pos_embed_for(weights, "pos_embed", (img_size // arch["patch_size"],) * 2)
    encoder = build_for_loading(lambda: VisionTransformer(**arch))
    load_strict(encoder, weights, f"{which} encoder", origin, assign=True)
    return encoder.eval()


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


def classifier_from_state(state: Mapping[str, Any], origin: str) -> tuple[ViTClassifier, ClassifierInfo]:
    """The classifier (eval mode, CPU) and its info from a fine-tuned classifier's checkpoint dict."""
    if not is_classifier_checkpoint(state):
        raise CheckpointError(f"{origin} is not a fine-tuned classifier (written by `openjepa finetune`); for an "
                              f"I-JEPA checkpoint use `openjepa eval` or `openjepa export`")
    if int(state.get("format_version", 0)) > CLASSIFIER_FORMAT_VERSION:
        raise CheckpointError(f"{origin} was written by a newer openjepa; upgrade openjepa to read it")
    try:
        model = build_for_loading(lambda: ViTClassifier.from_arch(state["arch"]))
        info = ClassifierInfo(**state["info"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{origin} describes an invalid classifier: {exc}") from exc
    load_strict(model, state["model"], "classifier", origin, assign=True)
    return model.eval(), info


# -- from a run folder or a checkpoint file --------------------------------------------------------------------------
@dataclass
class LoadedEncoder:
    """An encoder read from a checkpoint, with what the file says about how it was trained."""

    encoder: VisionTransformer
    which: str  # target (EMA) or context
    path: Path
    run_config: dict[str, Any] | None  # the recorded RunConfig as a plain dict (None: a released checkpoint)
    epoch: int | None
    step: int | None
    metadata: dict[str, Any]  # the checkpoint's other entries (licence, normalisation...): see :func:`metadata`
    classifier: ClassifierInfo | None = None  # a fine-tuned classifier's file: its info (the encoder is its own)


def read_encoder(path: CheckpointLike, which: str = "target", img_size: int | None = None,
                 num_heads: int | None = None) -> LoadedEncoder:
    """The ``target`` (EMA; what the paper evaluates) or ``context`` encoder of a checkpoint file or run folder,
    in eval mode on the CPU; of a fine-tuned classifier, its one encoder. Weights load strictly; any mismatch is a
    :class:`CheckpointError` naming the keys."""
    if which not in ENCODERS:
        raise UserError(f"which encoder: choose 'target' or 'context', not {which!r}")
    state, origin = read_checkpoint(path, classifiers=True)
    if is_classifier_checkpoint(state):
        return _classifier_encoder(state, origin, which, img_size)
    recorded = state.get("config")
    return LoadedEncoder(
        encoder=encoder_from_state(state, origin, which, img_size, num_heads),
        which=which,
        path=Path(origin),
        run_config=dict(recorded) if isinstance(recorded, dict) else None,
        epoch=_int_or_none(state.get("epoch")),
        step=_int_or_none(state.get("step")),
        metadata=metadata(state),
    )


def _classifier_encoder(state: Mapping[str, Any], origin: str, which: str, img_size: int | None) -> LoadedEncoder:
    if which != "target":
        raise UserError(f"{origin} is a fine-tuned classifier: it has one encoder, not a target and a context one")
    classifier, info = classifier_from_state(state, origin)
    encoder = classifier.encoder if img_size is None else encoder_at(classifier.encoder, img_size)
    recorded = state.get("config")
    shared = {k: v for k, v in recorded.items() if k in SHARED_SECTIONS} if isinstance(recorded, Mapping) else None
    return LoadedEncoder(encoder, which, Path(origin), shared, _int_or_none(state.get("epoch")),
                         _int_or_none(state.get("step")), metadata(state), info)


def read_classifier(path: str | os.PathLike) -> tuple[ViTClassifier, ClassifierInfo]:
    """The fine-tuned classifier of a fine-tuning run folder (its chosen classifier, ``finetune-best.pth.tar``) or
    of a fine-tuning checkpoint file, in eval mode on the CPU, with its class names and normalisation.

    >>> model, info = read_classifier("runs/digits-finetune")       # doctest: +SKIP
    >>> info.classes[model(images).argmax(1)[0]]                      # doctest: +SKIP
    """
    state, origin = read_checkpoint(checkpoint_in(path, (FINETUNE_BEST,)), classifiers=True)
    return classifier_from_state(state, origin)


def is_classifier_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a run folder or a checkpoint file) holds a fine-tuned classifier. The file is memory-mapped,
    not read: the question is cheap even for a large checkpoint of another kind; an unreadable one is not."""
    try:
        return is_classifier_checkpoint(load_checkpoint_mmap(checkpoint_in(path)))
    except CheckpointError:
        return False


@dataclass
class PretrainedEncoder:
    """An encoder to build on downstream (``openjepa finetune``) and what is known about it: the input
    normalisation it was trained with (None: unknown), the licence of its weights, where they come from, the path
    it was read from, and the data settings of its pretraining (an openjepa run records them).
    :func:`openjepa.interop.load_pretrained` reads one from any source."""

    encoder: VisionTransformer
    mean: list[float] | None = None
    std: list[float] | None = None
    license: str | None = None
    source: str = "openjepa"
    origin: str = ""
    data: dict[str, Any] | None = None


def load_encoder(path: CheckpointLike, which: str = "target") -> VisionTransformer:
    """The ``target`` (default) or ``context`` encoder of a checkpoint file or run folder (see :func:`read_encoder`).

    >>> encoder = load_encoder("runs/digits/jepa-latest.pth.tar")   # doctest: +SKIP
    """
    return read_encoder(path, which).encoder


@dataclass
class TrainedModel:
    """An I-JEPA model rebuilt from a checkpoint, with the run config it was trained with."""

    model: IJEPA
    config: RunConfig  # the recorded one (defaults for a released checkpoint), its model section the weights'
    recorded: dict | None  # the recorded config as a plain dict (None: a released checkpoint)
    origin: str
    metadata: dict[str, Any]  # the checkpoint's other entries (licence, normalisation...): see :func:`metadata`

    def with_settings(self, config: RunConfig) -> TrainedModel:
        """The same model under other data / mask settings (its model section is kept)."""
        return replace(self, config=replace(config, model=self.config.model))


def load_trained(path: CheckpointLike, device: str | torch.device = "cpu", img_size: int | None = None,
                 num_heads: int | None = None) -> TrainedModel:
    """Rebuild the model of an openjepa training checkpoint (file or run folder) or of a released I-JEPA one.

    Released checkpoints record no run config: their model section is read off the weights and the other
    sections take their defaults (pass other settings with :meth:`TrainedModel.with_settings`).
    """
    state, origin = read_checkpoint(path)
    model = model_from_state(state, origin, img_size, num_heads).to(device).eval()
    recorded = state.get("config") if isinstance(state.get("config"), dict) else None
    try:
        run_config = from_dict(recorded) if recorded is not None else RunConfig()
    except ConfigError as exc:
        raise CheckpointError(f"the run config recorded in {origin} is invalid: {exc}") from exc
    model_cfg = model_config_of(state, origin, num_heads)
    model_cfg = replace(model_cfg, img_size=img_size) if img_size is not None else model_cfg
    return TrainedModel(model, replace(run_config, model=model_cfg), recorded, origin, metadata(state))


def encoder_at(encoder: VisionTransformer, img_size: int) -> VisionTransformer:
    """A copy of ``encoder`` built for ``img_size`` images, its position embeddings resampled bicubically."""
    check_img_size(img_size, encoder.patch_size)
    arch = encoder.arch()
    arch["img_size"] = img_size
    resized = VisionTransformer(**arch, norm_eps=encoder.norm.eps)
    weights = dict(encoder.state_dict())
    weights["pos_embed"] = encoder.pos_embed_for(resized.grid_size)
    resized.load_state_dict(weights)
    return resized.eval()
