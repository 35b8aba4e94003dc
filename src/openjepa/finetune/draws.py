"""Low-shot fine-tuning over several draws: one run per labelled subset, mean and std of the test accuracy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..eval.lowshot import Draw, LowShot, LowShotResult
from ..pretrained import PretrainedEncoder
from ..run_folder import FINAL_JSON, FINETUNE_LATEST, LOW_SHOT_JSON, draw_folder_name
from .config import FinetuneConfig
from .trainer import FinetuneResult, finetune


def with_low_shot(cfg: FinetuneConfig, spec: LowShot, draw: int = 0,
                  out_dir: str | Path | None = None) -> FinetuneConfig:
    """``cfg`` fine-tuning on draw ``draw`` of ``spec`` (seed ``spec.seed + draw``), optionally in ``out_dir``."""
    settings = dataclasses.replace(cfg.finetune, labels_per_class=spec.labels_per_class,
                                   label_fraction=spec.fraction, draw_seed=spec.seed + draw)
    train = dataclasses.replace(cfg.train, out_dir=str(out_dir)) if out_dir is not None else cfg.train
    return dataclasses.replace(cfg, finetune=settings, train=train)


def finetune_draws(cfg: FinetuneConfig, pretrained: PretrainedEncoder | None, spec: LowShot,
                   overwrite: bool = False) -> LowShotResult:
    """Fine-tune once per draw of ``spec``, draw ``k`` in ``train.out_dir/draw-k``, and write the mean and std of
    the test top-1 to ``train.out_dir/low_shot.json``. Running it again continues: a finished draw is read back,
    an interrupted one resumed (unless ``overwrite``)."""
    root = Path(cfg.train.out_dir)
    summary = LowShotResult("finetune", spec)
    for k, seed in enumerate(spec.seeds):
        run_dir = root / draw_folder_name(k)
        draw_cfg = with_low_shot(cfg, spec, k, run_dir)
        if not overwrite and (run_dir / FINAL_JSON).is_file():
            result = FinetuneResult.from_final(run_dir)
        elif not overwrite and (run_dir / FINETUNE_LATEST).is_file():
            result = finetune(draw_cfg, None, resume=run_dir)
        else:
            result = finetune(draw_cfg, pretrained, overwrite=overwrite)
        if result.stop_reason != "completed" or result.top1 is None:
            raise StoppedDraw(k, result)
        summary.draws.append(Draw(seed, result.low_shot_indices or [], result))
    root.mkdir(parents=True, exist_ok=True)
    (root / LOW_SHOT_JSON).write_text(json.dumps({**summary.to_dict(), "line": summary.line()}, indent=2) + "\n")
    return summary


class StoppedDraw(Exception):
    """A draw's run stopped before the end (interrupted, time or step limit); ``result`` says how."""

    def __init__(self, draw: int, result: FinetuneResult):
        super().__init__(f"draw {draw} stopped ({result.stop_reason}) at step {result.position.global_step}")
        self.draw, self.result = draw, result
