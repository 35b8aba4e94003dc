"""A run folder (``train.out_dir``): the names of its files, and the operations on the folder as a whole.

::

    RUN_DIR/
      config.yaml                        the run's settings (``--resume RUN_DIR`` reads them back)
      jepa-latest.pth.tar                the latest checkpoint
      jepa-ep<N>.pth.tar                 numbered copies (``train.keep_every``)
      metrics.csv                        one row per training step
      monitor.csv                        one row per online evaluation
      curves.png                         the training curves
      final.json                         the final probe's report
      tensorboard/                       TensorBoard events (``train.tensorboard``)
      unreadable-rank<R>-pid<P>.jsonl    unreadable images met by each process (see openjepa.data.bad_files)

Every other module takes these names from here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .atomic_write import atomic_write
from .config import RunConfig, load_config
from .errors import CheckpointError, ConfigError

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


def epoch_checkpoint_name(epoch: int) -> str:
    """The numbered checkpoint kept at the end of ``epoch`` (``train.keep_every``)."""
    return f"jepa-ep{epoch}.pth.tar"


def unreadable_record_name(rank: int, pid: int) -> str:
    """The file in which one process records the unreadable images it met (one JSON line each)."""
    return f"unreadable-rank{rank}-pid{pid}.jsonl"



def checkpoint_in(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a checkpoint file, the latest checkpoint when it is a run folder: every command
    that takes ``--checkpoint`` accepts both."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / LATEST).is_file():
        raise CheckpointError(f"{path} is a folder without {LATEST}; pass a checkpoint file or a run folder")
    return path / LATEST


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


def save_run_config(config: RunConfig, run_dir: Path, note: str | None = None) -> Path:
    """Write ``config.yaml`` atomically: a process killed while writing it must not leave a truncated file that
    ``--resume RUN_DIR`` would read back as different (default) settings. ``note`` (e.g. what
    ``train.precision=auto`` resolved to) heads the file as a comment: recorded, but not read back, so that a
    resumed run decides again on the machine it resumes on."""
    path = Path(run_dir) / CONFIG
    with atomic_write(path) as f:
        f.write("".join(f"# {line}\n" for line in (note or "").splitlines()) + config.to_yaml())
    return path


def clear_earlier_run(run_dir: Path, overwrite: bool) -> None:
    """Before a fresh start: the records of unreadable images (an earlier attempt may have read other data), and
    with ``overwrite`` also the checkpoints and TensorBoard events of the run that was there."""
    if overwrite:
        for old in run_dir.glob(CHECKPOINTS):
            old.unlink()
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
