"""What a training checkpoint holds, and how a run is put back exactly where it stopped (the position and random
state, which fine-tuning's checkpoints record the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    NORMALISATION_KEY,
    add_prefix,
    is_official_checkpoint,
    load_strict,
    misfits,
    save_checkpoint,
    strip_prefix,
)
from ..checkpoint_writer import load_checkpoint_mmap
from ..errors import CheckpointError
from ..ijepa import IJEPA
from ..resume_state import load_optimizer_state, resumable_state
from ..run_folder import LATEST, epoch_checkpoint_name
from ..version import __version__

RESUME_ADVICE = ("check that the config's model section (arch, patch_size, img_size, pred_depth, pred_emb_dim) "
                 "matches the checkpoint's")


@dataclass
class Position:
    """Where training stands: ``epoch`` epochs completed plus ``step_in_epoch`` steps of the next one."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0

    def after_step(self) -> Position:
        return Position(self.epoch, self.step_in_epoch + 1, self.global_step + 1)

    def after_epoch(self) -> Position:
        return Position(self.epoch + 1, 0, self.global_step)


# How the random state of a run is kept. Masks and crops come from generators seeded by (seed, epoch, step,
# sample); the global generator, which drives drop-path, is seeded before every micro-batch from (seed, step,
# virtual rank) by the trainer. No random state has to travel in a pretraining checkpoint for an exact resume, on
# any number of processes; the entry records the scheme (checkpoints of earlier versions hold process 0's generator
# state, which resuming no longer needs).
RNG_SCHEME = {"scheme": "seeded per micro-batch from (train.seed, step, virtual rank)"}


def rng_state() -> dict[str, Any]:
    """This process's global generator states (CPU and CUDA), as tensors a checkpoint can hold, for a loop that
    carries them in its checkpoints (fine-tuning; pretraining does not: see ``RNG_SCHEME``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Put back the generators' state of :func:`rng_state` (CUDA only on a machine with as many devices); nothing
    for a checkpoint without generator states."""
    if not state or "torch" not in state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(
    model: IJEPA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    position: Position,
    loss: float,
    batch_size: int,
    world_size: int,
    config: dict[str, Any],
    normalisation: dict[str, list[float]] | None = None,
    provenance: dict[str, str] | None = None,
    precision: dict[str, Any] | None = None,
    accum_steps: int = 1,
) -> dict[str, Any]:
    """The checkpoint dict: the released layout (``module.``-prefixed state dicts, ``opt``, ``epoch``...) plus
    openjepa's exact-resume fields, the input normalisation the weights were trained with, the precision the run
    resolved to (``train.precision`` may say ``auto``), and (for runs that started from released weights) their
    ``license`` and ``source``, which exports carry on. ``batch_size`` is per process and micro-batch, as in the
    released files; ``accum_steps`` and ``global_batch`` (``batch_size x world_size x accum_steps``) complete it."""
    return {
        **(provenance or {}),
        NORMALISATION_KEY: normalisation,
        "encoder": add_prefix(model.encoder.state_dict()),
        "predictor": add_prefix(model.predictor.state_dict()),
        "target_encoder": add_prefix(model.target_encoder.state_dict()),
        "opt": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": position.epoch,
        "loss": float(loss),
        "batch_size": batch_size,
        "world_size": world_size,
        "accum_steps": accum_steps,
        "global_batch": batch_size * world_size * accum_steps,
        "lr": float(config["optim"]["lr"]),
        "step": position.global_step,
        "step_in_epoch": position.step_in_epoch,
        "config": config,
        "rng": dict(RNG_SCHEME),
        "precision": precision,
        "openjepa_version": __version__,
    }


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or inf, or None when every weight is finite: checked before
    a checkpoint is written, so that a diverged update never replaces a good checkpoint (one host sync)."""
    named = list(model.named_parameters())
    if not named:
        return None
    finite = torch.stack([torch.isfinite(param).all() for _, param in named]).tolist()
    return next((name for (name, _), ok in zip(named, finite) if not ok), None)


def save_training_state(state: dict[str, Any], run_dir: Path, keep_epoch: int | None = None) -> Path:
    """Write the latest checkpoint (atomically) and, when asked, a numbered copy for that epoch."""
    latest = save_checkpoint(state, run_dir / LATEST)
    if keep_epoch is not None:
        save_checkpoint(state, run_dir / epoch_checkpoint_name(keep_epoch))
    return latest


def provenance_of(state: dict[str, Any]) -> dict[str, str]:
    """``license`` / ``source`` of the weights a run resumed from (released weights keep their licence)."""
    return {k: state[k] for k in ("license", "source") if state.get(k)}


def restore_training_state(
    path: Path,
    model: IJEPA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    steps_per_epoch: int,
) -> tuple[Position, dict[str, Any]]:
    """Load weights, optimizer and scaler state; return where to continue and the raw checkpoint.

    The file is read through a memory map (:func:`~openjepa.checkpoint_writer.load_checkpoint_mmap`): tensors
    are read from the page cache as they are copied into the model, and the processes of a machine share those
    pages instead of each holding the whole file. Released checkpoints (no ``step``) resume at the start of the
    epoch after their ``epoch`` count.
    """
    state = load_checkpoint_mmap(path)
    for key in ("encoder", "predictor", "target_encoder"):
        if key not in state:
            raise CheckpointError(f"{path} is not an I-JEPA training checkpoint: it has no '{key}' entry")
    if is_official_checkpoint(state):  # released weights: shape-checked optimizer state, resampled positions
        state = resumable_state(state, str(path), img_size=model.encoder.patch_embed.img_size[0])
    for key, module, what in (("encoder", model.encoder, "context encoder"), ("predictor", model.predictor,
                              "predictor"), ("target_encoder", model.target_encoder, "target encoder")):
        load_strict(module, state[key], what, str(path), advice=_resume_advice(module, state[key]))
    if state.get("opt") is not None:
        load_optimizer_state(optimizer, state["opt"], str(path))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    epoch = int(state.get("epoch", 0))
    step_in_epoch = int(state.get("step_in_epoch", 0))
    global_step = int(state.get("step", epoch * steps_per_epoch + step_in_epoch))
    if step_in_epoch >= steps_per_epoch:  # saved at an epoch's end under another batch size
        epoch, step_in_epoch = epoch + 1, 0
    return Position(epoch, step_in_epoch, global_step), state


def _resume_advice(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    """What to do when a checkpoint's weights do not fit the model that the run's config builds."""
    shapes = misfits(module, strip_prefix(state_dict))["wrong_shapes"]
    if not shapes:
        return f"The run's config builds another model than the checkpoint holds; {RESUME_ADVICE}"
    key, expected, found = shapes[0]
    return (f"The run's config builds another model than the checkpoint holds (checkpoint {found} vs model "
            f"{expected} for {key}); {RESUME_ADVICE}")
