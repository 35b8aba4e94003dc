"""Resuming from a checkpoint of the released layout: its weights and AdamW state checked against the model the
run builds, the implementation flags of the machine that wrote it left out.

Released I-JEPA files and openjepa's own checkpoints share this layout (released files lack ``config``, ``step``
and ``rng``); :func:`resumable_state` brings either into the form :mod:`openjepa.train.checkpoints` restores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .checkpoint import OFFICIAL_LICENSE, OPENJEPA_LICENSE, add_prefix, is_official_checkpoint
from .errors import CheckpointError
from .pretrained import config_and_weights

# Optimizer settings that describe this machine's implementation, not the optimisation: they are not carried over.
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
GROUP_NAMES = ("encoder (weight decay)", "predictor (weight decay)", "encoder (no decay)", "predictor (no decay)")


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


def resumable_state(state: Mapping[str, Any], origin: str, img_size: int | None = None,
                    num_heads: int | None = None) -> dict[str, Any]:
    """Turn a checkpoint dict of the released layout (a released file, or openjepa's) into what the trainer
    resumes from.

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
    cfg, states = config_and_weights(state, origin, img_size, num_heads)
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

