"""The released I-JEPA checkpoints (``.pth.tar``): build the matching model, load it, resume training from it.

A released file holds ``encoder``, ``predictor`` and ``target_encoder`` state dicts (keys prefixed ``module.``
by DistributedDataParallel), the AdamW state ``opt``, the AMP ``scaler`` state and ``epoch``, ``loss``,
``batch_size``, ``world_size``, ``lr``. openjepa's own training checkpoints share that layout and add ``config``,
``step`` and ``rng``; every function here accepts both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from ..checkpoint import CheckpointError, add_prefix, load_checkpoint, strip_prefix
from ..errors import UserError
from ..ijepa import IJEPA, ModelConfig, build_ijepa
from ..models.vit import VisionTransformer
from .architecture import encoder_arch, model_config_from_weights
from .weights import as_float32, build_for_loading, load_strict, with_pos_embed_for

OFFICIAL_LICENSE = "CC-BY-NC-4.0"  # the licence of the released I-JEPA weights
OPENJEPA_LICENSE = "Apache-2.0"
# Optimizer settings that describe this machine's implementation, not the optimisation: they are not carried over.
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
GROUP_NAMES = ("encoder (weight decay)", "predictor (weight decay)", "encoder (no decay)", "predictor (no decay)")
ENCODERS = {"target": "target_encoder", "context": "encoder"}
ENCODER_ONLY_HINT = ("its encoders alone load with openjepa.interop.load_official_encoder (or export them with "
                     "`openjepa export --checkpoint FILE`)")

CheckpointLike = str | os.PathLike | Mapping[str, Any]


def read_checkpoint(source: CheckpointLike) -> tuple[dict[str, Any], str]:
    """The checkpoint dict (loaded without unpickling arbitrary objects) and a name for it in messages."""
    if isinstance(source, Mapping):
        state, origin = dict(source), "the checkpoint"
    else:
        state, origin = load_checkpoint(source), str(source)
    if not any(isinstance(state.get(k), Mapping) for k in ("encoder", "target_encoder")):
        found = ", ".join(map(str, list(state)[:8])) or "nothing"
        raise CheckpointError(
            f"{origin} is not an I-JEPA checkpoint: it has no 'encoder' or 'target_encoder' state dict (found "
            f"{found}). Pass a released I-JEPA .pth.tar file or an openjepa training checkpoint"
        )
    return state, origin


def is_official_checkpoint(state: Mapping[str, Any]) -> bool:
    """True for a released checkpoint, False for one written by openjepa (which always records its ``config``)."""
    return "config" not in state and "openjepa_version" not in state


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


def model_config_of(state: Mapping[str, Any], origin: str, num_heads: int | None = None) -> ModelConfig:
    """The model config recorded in an openjepa checkpoint, or the one read off a released file's weights."""
    recorded = state.get("config")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("model"), Mapping):
        from ..config import ConfigError, from_dict

        try:
            cfg = from_dict({"model": dict(recorded["model"])}).model
        except ConfigError as exc:
            raise CheckpointError(f"the model config recorded in {origin} is invalid: {exc}") from exc
        return replace(cfg, num_heads=num_heads) if num_heads else cfg
    encoder = encoder_state(state, "context", origin)
    encoder_arch(encoder, num_heads)  # first: a file of another model is reported as such
    if not isinstance(state.get("predictor"), Mapping):
        raise CheckpointError(f"{origin} has no 'predictor' weights, so a full I-JEPA model cannot be rebuilt "
                              f"from it; {ENCODER_ONLY_HINT}")
    return model_config_from_weights(encoder, strip_prefix(state["predictor"]), num_heads)


def check_img_size(img_size: int, patch_size: int) -> None:
    if img_size <= 0 or img_size % patch_size:
        raise UserError(
            f"img_size {img_size} is not a positive multiple of the patch size {patch_size}; use e.g. "
            f"{max(1, img_size // patch_size) * patch_size}"
        )


def _config_and_states(
    state: Mapping[str, Any], origin: str, img_size: int | None, num_heads: int | None
) -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]]]:
    """The model config (at ``img_size`` when given) and the three networks' weights (prefixes removed,
    position embeddings resampled to that config's grid when it differs from the file's)."""
    cfg = model_config_of(state, origin, num_heads)
    if img_size is not None:
        check_img_size(img_size, cfg.patch_size)
        cfg = replace(cfg, img_size=img_size)
    if not isinstance(state.get("predictor"), Mapping):
        raise CheckpointError(f"{origin} has no 'predictor' weights; {ENCODER_ONLY_HINT}")
    grid = (cfg.img_size // cfg.patch_size,) * 2
    states = {
        "encoder": with_pos_embed_for(encoder_state(state, "context", origin), "pos_embed", grid),
        "target_encoder": with_pos_embed_for(encoder_state(state, "target", origin), "pos_embed", grid),
        "predictor": with_pos_embed_for(as_float32(strip_prefix(state["predictor"])), "predictor_pos_embed", grid),
    }
    return cfg, states


def load_official(
    path: CheckpointLike, img_size: int | None = None, num_heads: int | None = None
) -> IJEPA:
    """Build the I-JEPA model of a released checkpoint and load its three networks (``strict=True``).

    The architecture is read from the weights' shapes (see :mod:`openjepa.interop.architecture`); the number of
    heads, which no shape records, comes from the preset of the same width unless ``num_heads`` is given. An
    openjepa training checkpoint works too (its recorded config is used).

    ``img_size`` builds the model for another resolution: the position embeddings of the encoders and the
    predictor are resampled bicubically from the trained grid, as pretrained weights are usually adapted (they
    are the embeddings the network was trained with; regenerating sin-cos tables would give slightly different
    ones at the same positions).

    >>> model = load_official("IN1K-vit.h.14-300e.pth.tar")          # doctest: +SKIP
    >>> features = model.target_encoder(images)                        # doctest: +SKIP
    """
    state, origin = read_checkpoint(path)
    return model_from_state(state, origin, img_size, num_heads)


def model_from_state(
    state: Mapping[str, Any], origin: str, img_size: int | None = None, num_heads: int | None = None
) -> IJEPA:
    """:func:`load_official` for a checkpoint dict already in memory (``origin`` names it in errors)."""
    cfg, states = _config_and_states(state, origin, img_size, num_heads)
    model = build_for_loading(lambda: build_ijepa(cfg))
    target = states["target_encoder"]
    if any(a is b for a, b in zip(states["encoder"].values(), target.values())):
        target = {k: v.clone() for k, v in target.items()}  # a file with one encoder: the networks must not share
    load_strict(model.encoder, states["encoder"], "context encoder", origin, assign=True)
    load_strict(model.target_encoder, target, "target encoder", origin, assign=True)
    load_strict(model.predictor, states["predictor"], "predictor", origin, assign=True)
    return model


def load_official_encoder(
    path: CheckpointLike, which: str = "target", img_size: int | None = None, num_heads: int | None = None
) -> VisionTransformer:
    """One encoder of a released (or openjepa) checkpoint: ``target`` (the EMA encoder that the paper evaluates)
    or ``context``. Needs no predictor in the file. ``img_size`` as for :func:`load_official`."""
    state, origin = read_checkpoint(path)
    return encoder_from_state(state, origin, which, img_size, num_heads)


def encoder_from_state(
    state: Mapping[str, Any], origin: str, which: str = "target", img_size: int | None = None,
    num_heads: int | None = None,
) -> VisionTransformer:
    """:func:`load_official_encoder` for a checkpoint dict already in memory (``origin`` names it in errors)."""
    weights = encoder_state(state, which, origin)
    recorded = state.get("config")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("model"), Mapping):
        arch = model_config_of(state, origin, num_heads).encoder_kwargs()
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


# -- resuming training ---------------------------------------------------------------------------------------------
def _expected_groups(states: Mapping[str, Mapping[str, torch.Tensor]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    """(name, shape) of every parameter of the four AdamW groups, in optimizer order: the released rule (no decay
    for biases and 1-D tensors), which :meth:`IJEPA.param_groups` follows. State-dict order is parameter order
    (the networks have no buffers)."""

    def group(sd: Mapping[str, torch.Tensor], prefix: str, decay: bool):
        return [(prefix + n, tuple(t.shape)) for n, t in sd.items() if (("bias" not in n) and t.ndim != 1) == decay]

    enc, pred = states["encoder"], states["predictor"]
    return [group(enc, "encoder.", True), group(pred, "predictor.", True),
            group(enc, "encoder.", False), group(pred, "predictor.", False)]


def _checked_optimizer_state(opt: Mapping[str, Any], states, origin: str) -> dict[str, Any]:
    """The optimizer state, checked against the model's parameters and cleaned of implementation flags."""
    if not isinstance(opt, Mapping) or "param_groups" not in opt or "state" not in opt:
        raise CheckpointError(f"the 'opt' entry of {origin} is not an optimizer state dict")
    expected = _expected_groups(states)
    saved = list(opt["param_groups"])
    if len(saved) != len(expected):
        raise CheckpointError(
            f"the optimizer state in {origin} has {len(saved)} parameter groups; the I-JEPA layout has 4 "
            f"({', '.join(GROUP_NAMES)})"
        )
    wrong = []
    for name, group, params in zip(GROUP_NAMES, saved, expected):
        if len(group["params"]) != len(params):
            raise CheckpointError(
                f"the optimizer state in {origin} has {len(group['params'])} tensors in its {name} group but the "
                f"model has {len(params)}: the optimizer state belongs to another model"
            )
        for pid, (pname, shape) in zip(group["params"], params):
            for key, value in opt["state"].get(pid, {}).items():
                if torch.is_tensor(value) and value.ndim and tuple(value.shape) != shape:
                    wrong.append(f"{pname} {key} found {tuple(value.shape)}, expected {shape}")
    if wrong:
        raise CheckpointError(f"the optimizer state in {origin} does not fit the model's parameters: "
                              f"{'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")
    groups = [{k: v for k, v in g.items() if k not in IMPLEMENTATION_FLAGS} for g in saved]
    for group in groups[2:]:  # the no-decay groups, whatever the file says
        group.setdefault("WD_exclude", True)
    per_param = {pid: {k: (torch.tensor(float(v)) if k == "step" and not torch.is_tensor(v) else v)
                       for k, v in s.items()} for pid, s in opt["state"].items()}
    return {"state": per_param, "param_groups": groups}


def official_to_training_state(
    checkpoint: CheckpointLike, img_size: int | None = None, num_heads: int | None = None
) -> dict[str, Any]:
    """Turn a released checkpoint (a path or its loaded dict) into what openjepa's trainer resumes from.

    Contract of the returned dict (openjepa's training-checkpoint layout):

    * ``encoder``, ``predictor``, ``target_encoder``: float32 state dicts with the ``module.`` prefix, position
      embeddings resampled when ``img_size`` differs from the file's;
    * ``opt``: the AdamW state, checked against those weights (four groups in the released order, per-parameter
      shapes), with integer ``step`` counters made tensors and the implementation flags (``fused``, ``foreach``,
      ``capturable``, ``differentiable``) removed: load it with :func:`load_optimizer_state` so that the
      resuming optimizer keeps its own; ``None`` when the file has none;
    * ``scaler``, ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr``: as released (``epoch`` = completed
      epochs, so training continues at step ``epoch * steps_per_epoch``);
    * no ``step`` or ``rng``: the released files do not record them;
    * ``config``: ``{"model": ModelConfig dict}`` read off the weights; build the model from it (or check that the
      run's config agrees) before loading;
    * ``license`` (``"CC-BY-NC-4.0"``) and ``source`` (``"official"``): keep them in the checkpoints of the resumed
      run, so that exports of the continued weights carry the licence of the weights they started from.
    """
    state, origin = read_checkpoint(checkpoint)
    cfg, states = _config_and_states(state, origin, img_size, num_heads)
    opt = state.get("opt")
    official = is_official_checkpoint(state)
    return {
        **{key: add_prefix(sd) for key, sd in states.items()},
        "opt": _checked_optimizer_state(opt, states, origin) if opt is not None else None,
        "scaler": state.get("scaler"),
        "epoch": int(state.get("epoch", 0)),
        "loss": float(state.get("loss", float("nan"))),
        "batch_size": state.get("batch_size"),
        "world_size": state.get("world_size"),
        "lr": state.get("lr"),
        "config": {"model": cfg.to_dict()},
        "license": state.get("license", OFFICIAL_LICENSE if official else OPENJEPA_LICENSE),
        "source": state.get("source", "official" if official else "openjepa"),
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, opt_state: Mapping[str, Any], origin: str = "") -> None:
    """``optimizer.load_state_dict(opt_state)`` that keeps this optimizer's implementation flags (fused, foreach,
    capturable: choices of this machine, not of the file) and explains a mismatch instead of a bare ValueError."""
    saved_groups = list(opt_state["param_groups"])
    if len(saved_groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"the optimizer state{' in ' + origin if origin else ''} has {len(saved_groups)} parameter groups, "
            f"this optimizer {len(optimizer.param_groups)}"
        )
    groups = []
    for current, saved in zip(optimizer.param_groups, saved_groups):
        merged = dict(saved)
        merged.update({flag: current[flag] for flag in IMPLEMENTATION_FLAGS if flag in current})
        groups.append(merged)
    try:
        optimizer.load_state_dict({**opt_state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"the optimizer state{' in ' + origin if origin else ''} does not fit this model's optimizer ({exc}); "
            f"was the model built with the checkpoint's architecture?"
        ) from exc

