"""A run folder (``train.out_dir``): the names of its files, and the operations on the folder as a whole.

A pretraining run (``openjepa pretrain``) and a fine-tuning run (``openjepa finetune``) write the same kind of
folder; only their checkpoints differ::

    RUN_DIR/
      config.yaml                        the run's settings (``--resume RUN_DIR`` reads them back)
      jepa-latest.pth.tar                pretraining: the latest checkpoint
      jepa-ep<N>.pth.tar                 pretraining: numbered copies (``train.keep_every``)
      finetune-latest.pth.tar            fine-tuning: the latest checkpoint (everything an exact resume needs)
      finetune-best.pth.tar              fine-tuning: the classifier chosen on the held-out images
      splits.json                        fine-tuning: which training images were trained on and held out
      metrics.csv                        one row per training step
      monitor.csv                        one row per evaluation (online monitor; fine-tuning: held-out score)
      curves.png                         the training curves
      final.json                         the final report (probe; fine-tuning: the test score)
      tensorboard/                       TensorBoard events (``train.tensorboard``)
      unreadable-rank<R>-pid<P>.jsonl    unreadable images met by each process (see openjepa.data.bad_files)

A low-shot fine-tuning over several draws (``--draws K``) writes one such folder per draw, ``RUN_DIR/draw-<k>``,
and their summary ``RUN_DIR/low_shot.json``. Every other module takes these names from here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .atomic_write import atomic_write
from .config import RunConfig, Sections, load_config
from .errors import CheckpointError, ConfigError, UserError

CONFIG = "config.yaml"
LATEST = "jepa-latest.pth.tar"
CHECKPOINTS = "jepa-*.pth.tar"
METRICS_CSV = "metrics.csv"
MONITOR_CSV = "monitor.csv"
CURVES_PNG = "curves.png"
FINAL_JSON = "final.json"
TENSORBOARD = "tensorboard"
UNREADABLE_RECORDS = "unreadable-*.jsonl"
UNFINISHED_WRITES = ".*.tmp"  # what openjepa.atomic_write leaves behind when a process dies mid-write
FINETUNE_LATEST = "finetune-latest.pth.tar"
FINETUNE_BEST = "finetune-best.pth.tar"
FINETUNE_CHECKPOINTS = "finetune-*.pth.tar"
SPLITS_JSON = "splits.json"
LOW_SHOT_JSON = "low_shot.json"
# The trained model of a run folder: a pretraining run's latest checkpoint, or a fine-tuning run's chosen classifier.
MODEL_FILES = (LATEST, FINETUNE_BEST)
# The latest checkpoint of each kind of run -> (the kind, the command that writes it).
RUN_KINDS = {LATEST: ("pretraining", "pretrain"), FINETUNE_LATEST: ("fine-tuning", "finetune")}


def epoch_checkpoint_name(epoch: int) -> str:
    """The numbered checkpoint kept at the end of ``epoch`` (``train.keep_every``)."""
    return f"jepa-ep{epoch}.pth.tar"


def unreadable_record_name(rank: int, pid: int) -> str:
    """The file in which one process records the unreadable images it met (one JSON line each)."""
    return f"unreadable-rank{rank}-pid{pid}.jsonl"


def draw_folder_name(draw: int) -> str:
    """The run folder of draw ``draw`` of a low-shot fine-tuning over several draws."""
    return f"draw-{draw}"


def checkpoint_in(path: str | os.PathLike, names: Sequence[str] = MODEL_FILES) -> Path:
    """``path`` itself when it is a checkpoint file; in a run folder, the first of ``names`` that it holds (by
    default its trained model: a pretraining run's latest checkpoint, a fine-tuning run's chosen classifier).
    Every command that takes ``--checkpoint``, ``--init`` or ``--model`` accepts both."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} is a folder without {' or '.join(names)}; pass a checkpoint file or a run folder")


def config_beside(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run folder holding ``checkpoint``, when there is one."""
    path = checkpoint.parent / CONFIG
    return path if path.is_file() else None


def load_run_config(source: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """A recipe name, a YAML file, or a run folder (its ``config.yaml``), with dotted overrides."""
    if source is not None and Path(source).is_dir():
        saved = Path(source) / CONFIG
        if not saved.is_file():
            raise ConfigError(f"{source} is a folder without {CONFIG}; pass a recipe name, a YAML file or a run "
                              f"folder written by `openjepa pretrain`")
        source = saved
    return load_config(source, overrides)


def save_run_config(config: Sections, run_dir: Path, note: str | None = None) -> Path:
    """Write ``config.yaml`` atomically: a process killed while writing it must not leave a truncated file that
    ``--resume RUN_DIR`` would read back as different (default) settings. ``note`` (e.g. what
    ``train.precision=auto`` resolved to) heads the file as a comment: recorded, but not read back, so that a
    resumed run decides again on the machine it resumes on."""
    path = Path(run_dir) / CONFIG
    with atomic_write(path) as f:
        f.write("".join(f"# {line}\n" for line in (note or "").splitlines()) + config.to_yaml())
    return path


def refuse_to_mix_runs(run_dir: Path, resume: Path | None, overwrite: bool, latest: str = LATEST) -> None:
    """A run whose latest checkpoint is ``latest`` never goes into a folder holding a run of another kind, and a
    fresh one into a folder holding one of its kind needs ``--overwrite`` (or ``--resume`` to continue it)."""
    command = RUN_KINDS[latest][1]
    for other, (kind, _) in RUN_KINDS.items():
        if other != latest and (run_dir / other).exists():
            raise UserError(f"{run_dir} holds a {kind} run ({other}); `openjepa {command}` needs a folder of its "
                            f"own: choose one with train.out_dir=PATH")
    if resume is None and (run_dir / latest).exists() and not overwrite:
        raise UserError(
            f"{run_dir} already holds a run ({latest}). Pass --resume to continue it, --overwrite to start again "
            f"from scratch in the same folder, or choose another folder with train.out_dir=PATH"
        )


def clear_earlier_run(run_dir: Path, overwrite: bool, checkpoints: str = CHECKPOINTS) -> None:
    """Before a fresh start: the records of unreadable images (an earlier attempt may have read other data), and
    with ``overwrite`` also the checkpoints (the files matching ``checkpoints``), final report and TensorBoard
    events of the run that was there."""
    if overwrite:
        for old in run_dir.glob(checkpoints):
            old.unlink()
        (run_dir / FINAL_JSON).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
    for old in run_dir.glob(UNREADABLE_RECORDS):
        old.unlink()


def remove_unfinished_writes(run_dir: Path) -> int:
    """Delete the temporary files of writes (checkpoints, config, CSV rewrites) that a killed process never
    finished; the files they were replacing are intact. Without this they would pile up, one per crash."""
    stray = sorted(run_dir.glob(UNFINISHED_WRITES))
    for path in stray:
        path.unlink(missing_ok=True)
    if stray:
        print(f"openjepa: removed {len(stray)} unfinished checkpoint file(s) left in {run_dir} by an interrupted "
              f"save; the finished checkpoints are untouched", flush=True)
    return len(stray)
