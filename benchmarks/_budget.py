"""Shared by the quality benchmarks: I-JEPA pretraining within a fixed wall-clock budget, then frozen evaluation.

How the budget is enforced (docs/benchmarks.md, "Quality"):

1. The clock starts when :func:`pretrain_within` is called. The precision is resolved as the trainer resolves it
   (``train.precision=auto`` measures the CPU), then a throw-away copy of the run (same model, data, masks,
   precision and thread settings) trains ``calibration_steps`` steps after ``warmup_steps`` untimed ones; their
   mean time per step (data loading included) is the calibrated step time.
2. The steps that fit in what is left of the budget (minus a safety margin for the per-epoch monitor,
   checkpoints and the trainer's setup) become the run's length: ``train.max_steps``, with ``optim.epochs`` and
   ``optim.ipe_scale`` set so that the learning-rate, weight-decay and EMA schedules end exactly at that step,
   and the warm-up keeping the recipe's share of the schedule (``warmup_epochs / epochs``).
3. ``train.max_minutes`` is set, just before the loop starts, to the time left until the deadline: a hard stop if
   the run is slower than calibrated (the result then records that the schedules did not complete).
4. With ``fit_to_deadline`` (the default since the calibration was found to miss the loop's speed by 25-40 % on a
   2-core cloud CPU), the calibrated length is only the first guess: the trainer re-plans it as it goes
   (``train.fit_to_deadline``, ``openjepa.train.deadline``) from the speed its loop measures, so that the schedules
   end at the deadline. ``fit_to_deadline=False`` is the earlier protocol, for comparisons with its results.

Calibration, setup, training, the per-epoch online monitor and checkpoint writes all count towards the budget;
the evaluation afterwards does not. With ``steps`` instead of ``minutes`` a run takes exactly that many steps, with
the same schedule fitting and no time limit (the equal-steps comparisons of ``ablations.py``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from openjepa.config import RunConfig
from openjepa.cpu_allocator import keep_freed_memory
from openjepa.data import build_eval_dataset, build_pretrain_loader
from openjepa.eval import Features, extract_features, knn_classify, linear_probe, load_encoder, random_init_like
from openjepa.eval.lowshot import LowShot, low_shot_linear
from openjepa.eval.subsets import dataset_labels, stratified_subset
from openjepa.ijepa import build_ijepa
from openjepa.run_folder import MONITOR_CSV
from openjepa.schedules import Schedules
from openjepa.step import make_optimizer, train_step
from openjepa.train.autoprecision import run_probe_shapes
from openjepa.train.run_log import read_rows
from openjepa.train.runtime import Runtime, setup_runtime, shutdown_runtime
from openjepa.train.trainer import Trainer

SAFETY_MARGIN = 0.03  # share of the remaining budget kept free for monitor runs, checkpoints and plots
SETUP_ALLOWANCE_S = 5.0  # the trainer's setup (data, model, monitor subsets) on top of what calibration measured


@dataclass
class Plan:
    """How a run was fitted into its budget (or, for a fixed number of steps, how its schedules were set)."""

    budget_s: float | None  # None: a fixed number of steps, no time limit
    calibration_s: float
    step_s: float | None  # calibrated mean seconds per step (None: not calibrated)
    steps_per_epoch: int
    max_steps: int
    epochs: int
    ipe_scale: float
    warmup_epochs: float = math.nan  # the recipe's warm-up share of its schedule, applied to this run's length
    hard_stop_min: float = math.nan  # train.max_minutes, set when the loop starts
    fit_to_deadline: bool = False  # max_steps is a first guess, re-planned by the trainer as the run goes

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def calibrate(cfg: RunConfig, runtime: Runtime, steps: int, warmup: int) -> tuple[float, int, float]:
    """Mean seconds per training step (data included) of ``cfg`` on this machine, in the precision ``runtime``
    resolved to, the steps per epoch, and the seconds it took to build the data and the model (a proxy for the
    trainer's own setup)."""
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    keep_freed_memory()
    data = build_pretrain_loader(cfg.data, cfg.model, cfg.mask, cfg.train.seed)
    with torch.random.fork_rng(devices=[]):
        model = build_ijepa(cfg.model)
    optimizer = make_optimizer(model)
    sched = Schedules(1000, 10, lr=cfg.optim.lr)
    setup_s = time.perf_counter() - t0
    data.set_epoch(0)
    steps_per_epoch = data.steps_per_epoch
    times = []
    tick = time.perf_counter()
    for i, batch in enumerate(data.loader):
        lr, wd, momentum = sched.at(i)
        train_step(model, optimizer, batch.images, batch.context, batch.targets, lr, wd, momentum,
                   autocast_dtype=runtime.autocast_dtype)
        now = time.perf_counter()
        times.append(now - tick)
        tick = now
        if len(times) >= warmup + steps:
            break
    del model, optimizer, data
    return statistics.fmean(times[warmup:]), steps_per_epoch, setup_s


def fixed_length(cfg: RunConfig, max_steps: int, steps_per_epoch: int, budget_s: float | None = None,
                 calibration_s: float = 0.0, step_s: float | None = None) -> Plan:
    """The schedules of ``cfg`` fitted to ``max_steps``: they end exactly there (``optim.epochs`` and
    ``optim.ipe_scale``), and the warm-up keeps the recipe's share of the schedule (``warmup_epochs / epochs``),
    so that a short run on a slow machine does not spend most of its steps warming up."""
    epochs = math.ceil(max_steps / steps_per_epoch)
    warmup_share = cfg.optim.warmup_epochs / cfg.optim.epochs
    return Plan(budget_s, calibration_s, step_s, steps_per_epoch, max_steps, epochs,
                max_steps / (epochs * steps_per_epoch), warmup_share * max_steps / steps_per_epoch)


def plan_run(cfg: RunConfig, runtime: Runtime, budget_s: float, started: float, calibration_steps: int,
             warmup_steps: int) -> Plan:
    """Calibrate, then choose the run length that fits in what is left of the budget."""
    step_s, spe, setup_s = calibrate(cfg, runtime, calibration_steps, warmup_steps)
    elapsed = time.monotonic() - started
    left = budget_s - elapsed - setup_s - SETUP_ALLOWANCE_S
    max_steps = max(1, int(left * (1 - SAFETY_MARGIN) / step_s))
    return fixed_length(cfg, max_steps, spe, budget_s, round(elapsed, 2), step_s)


def budgeted_config(cfg: RunConfig, plan: Plan) -> RunConfig:
    """``cfg`` with the run length of ``plan``: schedules that end at ``plan.max_steps``."""
    optim = replace(cfg.optim, epochs=plan.epochs, ipe_scale=plan.ipe_scale, warmup_epochs=plan.warmup_epochs)
    train = replace(cfg.train, max_steps=plan.max_steps, max_minutes=None)
    return replace(cfg, optim=optim, train=train)


def pretrain_within(cfg: RunConfig, minutes: float | None = None, calibration_steps: int = 20,
                    warmup_steps: int = 3, overwrite: bool = True, steps: int | None = None,
                    fit_to_deadline: bool = True) -> dict:
    """Pretrain ``cfg`` for ``minutes`` of wall-clock time (calibration and setup included), or for exactly
    ``steps`` steps (no time limit: the equal-steps comparisons). With ``minutes`` and ``fit_to_deadline``, the
    trainer re-plans the calibrated length as it goes. Returns the plan and what the run did; the checkpoint is in
    ``cfg.train.out_dir``."""
    if (minutes is None) == (steps is None):
        raise ValueError("give a budget in minutes or a number of steps")
    started = time.monotonic()
    runtime = setup_runtime(cfg.train.device, cfg.train.precision, run_probe_shapes(cfg), cfg.train.threads)
    try:
        if steps is None:
            plan = plan_run(cfg, runtime, minutes * 60, started, calibration_steps, warmup_steps)
        else:
            plan = fixed_length(cfg, steps, Trainer(cfg, runtime, None, overwrite).steps_per_epoch)
        run_cfg = budgeted_config(cfg, plan)
        if minutes is not None:
            plan.fit_to_deadline = run_cfg.train.fit_to_deadline = fit_to_deadline
            run_cfg.train.max_minutes = minutes - (time.monotonic() - started) / 60  # provisional: set below
        trainer = Trainer(run_cfg, runtime, None, overwrite)
        if minutes is not None:  # the trainer reads the limit when its loop starts, and at every step
            plan.hard_stop_min = run_cfg.train.max_minutes = (minutes * 60 - (time.monotonic() - started)) / 60
        loop_started = time.monotonic()
        result = trainer.run()
        loop_s = time.monotonic() - loop_started
    finally:
        shutdown_runtime(runtime)
    total_s = time.monotonic() - started
    done = result.position.global_step
    fit = result.schedule_fit
    return {
        "plan": plan.to_dict(),
        **({"fitted_length": fit} if fit else {}),
        "precision": runtime.precision_choice.record() if runtime.precision_choice else runtime.precision,
        "steps": done,
        "epochs_reached": round(done / plan.steps_per_epoch, 3),
        "schedule_completed": round(done / (fit["end_step"] if fit else plan.max_steps), 4),
        "stop_reason": result.stop_reason,
        "final_loss": result.last_loss,
        "training_loop_s": round(loop_s, 1),
        "total_s": round(total_s, 1),
        "images_per_s_in_loop": round(done * run_cfg.data.batch_size / loop_s, 1),
        "within_budget": None if minutes is None else total_s <= minutes * 60 + 1.0,
        # whether the encoder was still improving when the budget ran out
        "online_monitor": read_rows(Path(run_cfg.train.out_dir) / MONITOR_CSV),
    }


# -- evaluation --------------------------------------------------------------------------------------------------
def encoder_features(encoder, dataset, pools: list[str], batch_size: int, desc: str) -> dict[str, Features]:
    """Features of every pool in one pass: the ``mean`` pool is the last block of ``concat4`` (both through the
    final norm), so asking for both costs one extraction."""
    depth = encoder.depth
    if "concat4" in pools and depth >= 4:
        full = extract_features(encoder, dataset, "concat4", batch_size, "cpu", desc=desc)
        dim = full.dim // 4
        out = {"concat4": full}
        if "mean" in pools:
            out["mean"] = Features(full.x[:, -dim:].contiguous(), full.y, {"pool": "mean"})
        return out
    return {"mean": extract_features(encoder, dataset, "mean", batch_size, "cpu", desc=desc)}


def score(train: Features, test: Features, eval_cfg, low_shot: LowShot | None = None) -> dict:
    """Linear probe (weight decay chosen on held-out training data) and k-NN top-1/top-5 on the test split; with
    ``low_shot``, also the linear probe trained on each of its labelled draws of the training split (mean, std,
    every draw's accuracy and seed; the indices are recorded by ``openjepa.eval.lowshot``)."""
    t0 = time.perf_counter()
    probe = {"weight_decays": eval_cfg.probe_weight_decays, "holdout": eval_cfg.probe_holdout,
             "seed": eval_cfg.seed, "max_iter": eval_cfg.probe_max_iter, "device": "cpu"}
    lin = linear_probe(train, test, progress=True, **probe)
    knn = knn_classify(train, test, eval_cfg.knn_k, eval_cfg.knn_temperature, "cpu")
    out = {"linear_top1": round(lin.top1, 4), "linear_top5": round(lin.top5, 4) if lin.top5 else None,
           "linear_weight_decay": lin.weight_decay, "knn_top1": round(knn.top1, 4),
           "knn_top5": round(knn.top5, 4) if knn.top5 else None, "dim": train.dim, "n_train": len(train),
           "n_test": len(test)}
    if low_shot is not None:
        few = low_shot_linear(train, test, low_shot, **probe)
        out["low_shot"] = {"linear_top1": round(few.top1, 4),
                           "linear_top1_std": None if few.top1_std is None else round(few.top1_std, 4),
                           "draws_top1": [round(d.result.top1, 4) for d in few.draws],
                           "draw_seeds": [d.seed for d in few.draws], "n_train": [len(d.indices) for d in few.draws],
                           **low_shot.to_dict()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def evaluate_encoders(cfg: RunConfig, run_dir: Path, which: list[str], pools: list[str],
                      low_shot: LowShot | None = None, samples: tuple[int, int] | None = None) -> dict:
    """Scores of the run's ``target`` / ``context`` encoders and of ``random`` (same architecture, seed
    ``eval.seed``) on the full train / test splits (with ``low_shot``: its draws too, ``mean`` pool only), or, with
    ``samples = (train, test)``, on fixed stratified subsets of that many images (seed ``eval.seed``: the same
    images for every run)."""
    train_ds = _subset(build_eval_dataset(cfg.data, cfg.model, "train"), samples and samples[0], cfg.eval.seed)
    test_ds = _subset(build_eval_dataset(cfg.data, cfg.model, "test"), samples and samples[1], cfg.eval.seed)
    results = {}
    for name in which:
        if name == "random_init":
            encoder = random_init_like(load_encoder(run_dir, "target"), cfg.eval.seed)
        else:
            encoder = load_encoder(run_dir, name)
        train = encoder_features(encoder, train_ds, pools, 512, f"{name}: train")
        test = encoder_features(encoder, test_ds, pools, 512, f"{name}: test")
        results[name] = {pool: score(train[pool], test[pool], cfg.eval, low_shot if pool == "mean" else None)
                         for pool in train}
    return results


def _subset(dataset, size: int | None, seed: int):
    """``dataset`` itself, or a stratified subset of ``size`` of its images (every class in its share)."""
    if size is None:
        return dataset
    indices = stratified_subset(dataset_labels(dataset), len(dataset), size, seed)
    return torch.utils.data.Subset(dataset, indices.tolist())


def pixel_features(cfg: RunConfig, split: str, side: int) -> Features:
    """Flattened, normalised pixels at ``side`` x ``side`` (the dataset's own resolution)."""
    dataset = build_eval_dataset(cfg.data, replace(cfg.model, img_size=side), split)
    xs, ys = [], []
    for images, labels in torch.utils.data.DataLoader(dataset, batch_size=1024):
        xs.append(images.flatten(1))
        ys.append(labels)
    return Features(torch.cat(xs), torch.cat(ys), {"pool": "pixels"})
