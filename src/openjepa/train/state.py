"""What a training checkpoint holds, and how a run is put back exactly where it stopped."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..checkpoint import CheckpointError, add_prefix, load_checkpoint, load_weights, save_checkpoint
from ..ijepa import IJEPA
from ..interop.official import is_official_checkpoint, load_optimizer_state, official_to_training_state

if TYPE_CHECKING:
    from ..config import RunConfig

LATEST = "jepa-latest.pth.tar"
RUN_CONFIG = "config.yaml"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"jepa-ep{epoch}.pth.tar"


@dataclass
class Position:
    """Where training stands: ``epoch`` epochs completed plus ``step_in_epoch`` steps of the next one."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any] | None) -> None:
    # Masks and crops come from generators seeded by (seed, epoch, step); the global generator only drives
    # drop-path, which is why restoring it is enough for an exact resume.
    if not state:
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
    normalization: dict[str, list[float]] | None = None,
    provenance: dict[str, str] | None = None,
    precision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict: the released layout (``module.``-prefixed state dicts, ``opt``, ``epoch``...) plus
    openjepa's exact-resume fields, the input normalisation the weights were trained with, the precision the run
    resolved to (``train.precision`` may say ``auto``), and (for runs that started from released weights) their
    ``license`` and ``source``, which exports carry on."""
    return {
        **(provenance or {}),
        "normalization": normalization,
        "encoder": add_prefix(model.encoder.state_dict()),
        "predictor": add_prefix(model.predictor.state_dict()),
        "target_encoder": add_prefix(model.target_encoder.state_dict()),
        "opt": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": position.epoch,
        "loss": float(loss),
        "batch_size": batch_size,
        "world_size": world_size,
        "lr": float(config["optim"]["lr"]),
        "step": position.global_step,
        "step_in_epoch": position.step_in_epoch,
        "config": config,
        "rng": _rng_state(),
        "precision": precision,
        "openjepa_version": __version__,
    }


def save_training_state(state: dict[str, Any], run_dir: Path, keep_epoch: int | None = None) -> Path:
    """Write the latest checkpoint (atomically) and, when asked, a numbered copy for that epoch."""
    latest = save_checkpoint(state, run_dir / LATEST)
    if keep_epoch is not None:
        save_checkpoint(state, run_dir / epoch_checkpoint_name(keep_epoch))
    return latest


def save_run_config(config: RunConfig, run_dir: Path, note: str | None = None) -> Path:
    """Write ``config.yaml`` atomically: ``--resume RUN_DIR`` reads it back, and a process killed while writing
    it must not leave a truncated file that would resume under different (default) settings. ``note`` (e.g. what
    ``train.precision=auto`` resolved to) heads the file as a comment: recorded, but not read back, so that a
    resumed run decides again on the machine it resumes on."""
    path = run_dir / RUN_CONFIG
    fd, tmp = tempfile.mkstemp(prefix=f".{RUN_CONFIG}.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"# {line}\n" for line in (note or "").splitlines()) + config.to_yaml())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    """Load weights, optimizer, scaler and RNG state; return where to continue and the raw checkpoint.

    Released checkpoints (no ``step``) resume at the start of the epoch after their ``epoch`` count.
    """
    state = load_checkpoint(path)
    for key in ("encoder", "predictor", "target_encoder"):
        if key not in state:
            raise CheckpointError(f"{path} is not an I-JEPA training checkpoint: it has no '{key}' entry")
    if is_official_checkpoint(state):  # released weights: shape-checked optimizer state, resampled positions
        state = official_to_training_state(state, img_size=model.encoder.patch_embed.img_size[0])
    load_weights(model.encoder, state["encoder"], "context encoder")
    load_weights(model.predictor, state["predictor"], "predictor")
    load_weights(model.target_encoder, state["target_encoder"], "target encoder")
    if state.get("opt") is not None:
        load_optimizer_state(optimizer, state["opt"], str(path))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state.get("rng"))
    epoch = int(state.get("epoch", 0))
    step_in_epoch = int(state.get("step_in_epoch", 0))
    global_step = int(state.get("step", epoch * steps_per_epoch + step_in_epoch))
    if step_in_epoch >= steps_per_epoch:  # saved at an epoch's end under another batch size
        epoch, step_in_epoch = epoch + 1, 0
    return Position(epoch, step_in_epoch, global_step), state
