"""Downstream benchmark: a pretrained I-JEPA encoder against the same architecture at random initialisation, used
four ways on Fashion-MNIST, with 1 % and 100 % of the training labels.

For each encoder (``ijepa``: the target encoder of ``--checkpoint``; ``random_init``: a fresh encoder of the same
architecture and initialisation, seed 0) and each label budget (``--fractions``, default 0.01 and 1.0; 1 % means
60 images per class, ``--draws`` stratified draws, mean +- std):

* frozen k-NN and linear probe (mean-pooled features, openjepa.eval's protocols);
* frozen attentive probe (``openjepa eval attentive``'s protocol; ``--attentive-*`` flags shorten it);
* full fine-tuning (``openjepa finetune`` with the ``-c`` recipe): every run gets the same wall-clock budget of
  ``--minutes`` for its training loop. The run length is calibrated first (seconds per step measured on this
  machine), so that the warm-up + cosine schedule ends within the budget; ``train.max_minutes`` is the hard stop.
  The head's linear-probe initialisation and the final test scoring are not part of the budget.

Test top-1 on the official 10,000 test images. Prints one JSON object and writes it to ``--out`` (default
benchmarks/results/finetune_fmnist.json), with a Markdown table and the issue's targets.

Examples (docs/benchmarks.md, "Downstream")::

    python benchmarks/finetune_fmnist.py --checkpoint runs/quality_fmnist --minutes 10 --attentive-epochs 5
    python benchmarks/finetune_fmnist.py --checkpoint runs/quality_fmnist --minutes 10 --fractions 1 \
        --skip knn linear attentive --out benchmarks/results/finetune_fmnist_100pct.json
    python benchmarks/finetune_fmnist.py --checkpoint runs/quality_fmnist --minutes 10 --draws 1 --skip attentive
    # a smoke test in about a minute, on the embedded digits, with any small checkpoint:
    python benchmarks/finetune_fmnist.py --checkpoint runs/digits -c digits --minutes 0.1 --fractions 0.05 1 \\
        --draws 1 --attentive-epochs 1 --attentive-min-steps 5 --out /tmp/finetune_smoke.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_info, publish  # noqa: E402

from openjepa.data import build_eval_dataset  # noqa: E402
from openjepa.eval import (  # noqa: E402
    LowShot,
    extract_features,
    knn_classify,
    linear_probe,
    low_shot_knn,
    low_shot_linear,
)
from openjepa.eval.attentive import AttentiveConfig, evaluate_attentive  # noqa: E402
from openjepa.eval import random_init_like  # noqa: E402
from openjepa.finetune import (  # noqa: E402
    FinetuneResult,
    PretrainedEncoder,
    finetune,
    load_finetune_config,
    read_classifier,
    score_classifier,
    with_low_shot,
)
from openjepa.finetune.config import model_section  # noqa: E402
from openjepa.interop import load_pretrained  # noqa: E402
from openjepa.run_folder import METRICS_CSV  # noqa: E402

METHODS = ("knn", "linear", "attentive", "finetune")
CALIBRATION_STEPS, CALIBRATION_WARMUP = 20, 5
SAFETY_MARGIN = 0.05  # share of the budget kept free for the per-epoch held-out evaluations and checkpoints
TARGET_FINETUNE_TOP1 = 0.92  # the targets: fine-tuned from I-JEPA at 100 % of the labels...
TARGET_LOW_SHOT_GAIN = 0.05  # ...and ahead of random init by 5 points at 1 %


def budget_label(fraction: float) -> str:
    return "100%" if fraction >= 1 else f"{100 * fraction:g}%"


def low_shot(fraction: float, draws: int) -> LowShot | None:
    return None if fraction >= 1 else LowShot(fraction=fraction, draws=draws, seed=0)


def summary(result) -> dict:
    """``{"top1", "top1_std", "top5", "n_train", "draws"}`` of a plain or low-shot result."""
    draws = getattr(result, "draws", None)
    out = {"top1": round(result.top1, 4), "top5": round(result.top5, 4) if result.top5 is not None else None}
    if draws is not None:
        out.update(top1_std=round(result.top1_std, 4) if result.top1_std is not None else None,
                   draws=[round(d.result.top1, 4) for d in draws], seeds=[d.seed for d in draws],
                   n_train=len(draws[0].indices))
    else:
        out["n_train"] = getattr(result, "n_train", None)
    return out


# -- frozen evaluations ------------------------------------------------------------------------------------------------
def frozen(encoder, train_ds, test_ds, fractions, args) -> dict:
    out: dict = {}
    if "knn" not in args.skip or "linear" not in args.skip:
        train = extract_features(encoder, train_ds, "mean", args.batch_size, "cpu", desc="train features")
        test = extract_features(encoder, test_ds, "mean", args.batch_size, "cpu", desc="test features")
        for fraction in fractions:
            spec = low_shot(fraction, args.draws)
            if "knn" not in args.skip:
                knn = low_shot_knn(train, test, spec, True, k=20) if spec else knn_classify(train, test, 20)
                out.setdefault("knn", {})[budget_label(fraction)] = summary(knn)
            if "linear" not in args.skip:
                lin = low_shot_linear(train, test, spec, True) if spec else linear_probe(train, test, progress=True)
                out.setdefault("linear", {})[budget_label(fraction)] = summary(lin)
    if "attentive" not in args.skip:
        cfg = AttentiveConfig(epochs=args.attentive_epochs, min_steps=args.attentive_min_steps,
                              lrs=tuple(args.attentive_lrs), weight_decays=tuple(args.attentive_weight_decays))
        for fraction in fractions:
            t0 = time.perf_counter()
            result = evaluate_attentive(encoder, train_ds, test_ds, cfg, low_shot(fraction, args.draws),
                                        args.batch_size, "cpu")
            out.setdefault("attentive", {})[budget_label(fraction)] = {
                **summary(result), "seconds": round(time.perf_counter() - t0, 1)}
    return out


# -- fine-tuning within a budget ---------------------------------------------------------------------------------------
def calibrate(cfg, pretrained: PretrainedEncoder, scratch: Path) -> float:
    """Mean seconds per fine-tuning step (data included) of ``cfg`` on this machine."""
    trial = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, out_dir=str(scratch), max_steps=CALIBRATION_WARMUP +
                                       CALIBRATION_STEPS, max_minutes=None),
        finetune=dataclasses.replace(cfg.finetune, head_init="random"))
    finetune(trial, pretrained, overwrite=True)
    with open(scratch / METRICS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))[CALIBRATION_WARMUP:]
    return statistics.fmean(float(r["step_ms"]) + float(r["data_ms"]) for r in rows) / 1e3


def budgeted(cfg, step_s: float, minutes: float, n_train: int, n_holdout: int):
    """``cfg`` with as many epochs as fit in ``minutes`` of training loop (held-out evaluations included), a
    checkpoint every tenth of the run (low-shot runs have many short epochs). The warm-up is at most a tenth of the
    run: where only an epoch or two fit (all the labels on a slow CPU), a whole-epoch warm-up would end the run at
    its peak learning rate, without the cosine decay."""
    steps_per_epoch = max(1, n_train // cfg.data.batch_size)
    eval_s = n_holdout * step_s / cfg.data.batch_size / 3  # a forward pass is about a third of a training step
    epochs = max(1, int(minutes * 60 * (1 - SAFETY_MARGIN) / (steps_per_epoch * step_s + eval_s)))
    optim = dataclasses.replace(cfg.optim, epochs=epochs,
                                warmup_epochs=min(cfg.optim.warmup_epochs, epochs / 10))
    train = dataclasses.replace(cfg.train, max_minutes=minutes, checkpoint_every=max(1, epochs // 10))
    return dataclasses.replace(cfg, optim=optim, train=train)


def test_score(run_dir: Path, test_ds_for) -> float:
    """Test top-1 of a run's chosen classifier (for a run the hard time limit stopped before its end)."""
    model, info = read_classifier(run_dir)
    return score_classifier(model, test_ds_for(info)).top1


def fine_tuned(name: str, pretrained: PretrainedEncoder, base_cfg, fractions, step_s, args, test_ds_for) -> dict:
    out = {}
    for fraction in fractions:
        spec = low_shot(fraction, args.draws)
        run_dir = Path(args.run_dir) / f"{name}-{budget_label(fraction).replace('%', 'pct')}"
        cfg = dataclasses.replace(base_cfg, train=dataclasses.replace(base_cfg.train, out_dir=str(run_dir)))
        n = args.n_train_labels if spec is None else args.classes * max(1, round(fraction * args.per_class))
        holdout = max(1, round(cfg.finetune.holdout * n))
        if cfg.data.batch_size > (n - holdout) // 2:  # small low-shot sets: at least two steps per epoch
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=max(1, (n - holdout) // 2)))
        cfg = budgeted(cfg, step_s * cfg.data.batch_size / base_cfg.data.batch_size, args.minutes, n - holdout,
                       holdout)
        t0 = time.perf_counter()
        if spec is None:
            result = finetune(cfg, pretrained, overwrite=True)
            top1 = result.top1 if result.top1 is not None else test_score(run_dir, test_ds_for)
            record = {"top1": round(top1, 4), "top5": result.top5, "n_train": result.n_train,
                      "best": result.best, "stop_reason": result.stop_reason}
        else:
            draws = []
            for k in range(spec.draws):
                draw_cfg = with_low_shot(cfg, spec, k, run_dir / f"draw-{k}")
                result: FinetuneResult = finetune(draw_cfg, pretrained, overwrite=True)
                top1 = result.top1 if result.top1 is not None else test_score(draw_cfg.train.out_dir, test_ds_for)
                draws.append({"seed": spec.seed + k, "top1": round(top1, 4), "best": result.best,
                              "stop_reason": result.stop_reason})
            tops = [d["top1"] for d in draws]
            record = {"top1": round(statistics.fmean(tops), 4),
                      "top1_std": round(statistics.stdev(tops), 4) if len(tops) > 1 else None,
                      "draws": draws, "n_train": n}
        record.update(epochs=cfg.optim.epochs, batch_size=cfg.data.batch_size, minutes=args.minutes,
                      seconds=round(time.perf_counter() - t0, 1))
        out[budget_label(fraction)] = record
    return out


# -- report ------------------------------------------------------------------------------------------------------------
def table(results: dict, fractions) -> list[str]:
    labels = [budget_label(f) for f in fractions]
    head = "| method | " + " | ".join(f"{enc} {lab}" for lab in labels for enc in ("I-JEPA", "random init")) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(labels))]
    for method in METHODS:
        cells = []
        for lab in labels:
            for enc in ("ijepa", "random_init"):
                r = results.get(enc, {}).get(method, {}).get(lab)
                if r is None:
                    cells.append("-")
                else:
                    std = f" +- {r['top1_std']:.3f}" if r.get("top1_std") is not None else ""
                    cells.append(f"{r['top1']:.3f}{std}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def targets(results: dict) -> dict:
    out = {}
    ft = {enc: results.get(enc, {}).get("finetune", {}) for enc in ("ijepa", "random_init")}
    full = ft["ijepa"].get("100%")
    if full:
        out[f"finetuned_ijepa_100pct_at_least_{TARGET_FINETUNE_TOP1}"] = full["top1"] >= TARGET_FINETUNE_TOP1
    for lab in ft["ijepa"]:
        if lab in ft["random_init"]:
            gain = ft["ijepa"][lab]["top1"] - ft["random_init"][lab]["top1"]
            out[f"finetune_gain_over_random_{lab}_points"] = round(100 * gain, 2)
            out[f"finetune_ahead_of_random_{lab}"] = gain > (TARGET_LOW_SHOT_GAIN if lab != "100%" else 0)
    for lab in ("1%", "100%"):
        att, lin = (results.get("ijepa", {}).get(m, {}).get(lab) for m in ("attentive", "linear"))
        if att and lin:
            out[f"attentive_minus_linear_{lab}_points"] = round(100 * (att["top1"] - lin["top1"]), 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    fractions = sorted(set(args.fractions))
    overrides = [*args.overrides] + ([f"data.path={args.data_path}"] if args.data_path else [])
    base_cfg = load_finetune_config(args.config, overrides)
    pretrained = load_pretrained(args.checkpoint)
    random = PretrainedEncoder(random_init_like(pretrained.encoder, 0), pretrained.mean, pretrained.std,
                               "Apache-2.0", "openjepa", "random initialisation")
    model_cfg = model_section(pretrained.encoder)
    data_cfg = dataclasses.replace(base_cfg.data, mean=tuple(pretrained.mean), std=tuple(pretrained.std))
    train_ds = build_eval_dataset(data_cfg, model_cfg, "train")
    test_ds = build_eval_dataset(data_cfg, model_cfg, "test")
    labels = train_ds.source.labels
    args.n_train_labels, args.classes = len(labels), len(set(labels.tolist()))
    args.per_class = len(labels) / args.classes

    def test_ds_for(info):
        return build_eval_dataset(dataclasses.replace(data_cfg, mean=tuple(info.mean), std=tuple(info.std)),
                                  model_cfg, "test")

    step_s = None
    if "finetune" not in args.skip:
        step_s = calibrate(base_cfg, pretrained, Path(args.run_dir) / "calibration")
    results = {}
    for name, source in (("ijepa", pretrained), ("random_init", random)):
        results[name] = frozen(source.encoder, train_ds, test_ds, fractions, args)
        if "finetune" not in args.skip:
            results[name]["finetune"] = fine_tuned(name, source, base_cfg, fractions, step_s, args, test_ds_for)
    report = {
        "benchmark": "finetune_fmnist",
        "command": "python benchmarks/finetune_fmnist.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": str(args.checkpoint),
        "minutes_per_finetuning": args.minutes,
        "calibrated_step_s": round(step_s, 4) if step_s else None,
        "fractions": fractions,
        "draws": args.draws,
        "results": results,
        "table": table(results, fractions),
        "targets": targets(results),
        "finetune_config": base_cfg.to_dict(),
        "total_minutes": round((time.monotonic() - started) / 60, 1),
        "machine": machine_info(load_key="load_average_at_end"),
    }
    publish(report, Path(args.out))
    print("\n".join(report["table"]))
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fine-tuning recipe overrides")
    p.add_argument("--checkpoint", default="runs/quality_fmnist",
                   help="the pretrained encoder: run folder or checkpoint (default: quality_fmnist.py's run)")
    p.add_argument("-c", "--config", default="fashion_mnist", help="fine-tuning recipe (default fashion_mnist)")
    p.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST IDX files (default: the recipe's)")
    p.add_argument("--minutes", type=float, default=10.0, help="training-loop budget of every fine-tuning run")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 1.0], help="label budgets (1: all)")
    p.add_argument("--draws", type=int, default=3, help="stratified draws per low-shot budget (default 3)")
    p.add_argument("--skip", nargs="*", choices=METHODS, default=[], help="methods to leave out")
    p.add_argument("--attentive-epochs", type=int, default=AttentiveConfig.epochs)
    p.add_argument("--attentive-min-steps", type=int, default=AttentiveConfig.min_steps)
    p.add_argument("--attentive-lrs", type=float, nargs="+", default=list(AttentiveConfig.lrs))
    p.add_argument("--attentive-weight-decays", type=float, nargs="+", default=list(AttentiveConfig.weight_decays))
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
    p.add_argument("--run-dir", default="runs/finetune_fmnist", help="where the fine-tuning runs go")
    p.add_argument("--out", default="benchmarks/results/finetune_fmnist.json", help="JSON result file")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions) or args.draws < 1 or args.minutes <= 0:
        p.error("--fractions must be in (0, 1], --draws >= 1, --minutes > 0")
    if not math.isfinite(args.minutes):
        p.error("--minutes must be finite")
    return args


if __name__ == "__main__":
    main()
