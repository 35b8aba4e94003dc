"""Quality benchmark: I-JEPA on Fashion-MNIST within a fixed wall-clock budget, evaluated on frozen features.

Pretrains the ``fashion_mnist`` recipe (plus any ``KEY=VALUE`` overrides) for ``--minutes`` of wall-clock time
(calibration, setup, training, monitor and checkpoints included; the run's length re-planned as it goes so that
its schedules end at the deadline, or with ``--fixed-length`` the calibrated length; see ``_budget.py`` for how
the budget is enforced), then extracts features of the full 60,000 training and 10,000 test images and reports, for the I-JEPA
target encoder, the context encoder, the same architecture at random initialisation and the raw pixels:

* linear-probe top-1/top-5 (openjepa.eval's protocol: standardised features, weight decay chosen on 10% of the
  training set held out, refit on all of it);
* k-NN top-1/top-5 (k=20, T=0.07, cosine);
* low-shot: the paper's 1 % protocol (``--label-fraction 0.01``: 60 labelled images per class), a linear probe
  trained on each of ``--draws`` stratified, seeded draws of the training split, mean and std (``mean`` pool);

for the ``mean`` pool (the recipe's evaluation) and ``concat4`` (the last 4 blocks). Evaluation time is not part
of the budget. Prints one JSON object and writes it to ``--out`` (default: RUN_DIR/quality.json).

Examples (docs/benchmarks.md, "Quality", has the results)::

    python benchmarks/quality_fmnist.py --minutes 20                      # seed 0 -> runs/quality_fmnist
    python benchmarks/quality_fmnist.py --minutes 20 --seed 1             # -> runs/quality_fmnist-seed1
    python benchmarks/quality_fmnist.py optim.lr=2e-3 --minutes 6 --encoders target --pools mean
    python benchmarks/quality_fmnist.py --minutes 20 --eval-only          # evaluate runs/quality_fmnist again
    python benchmarks/quality_fmnist.py --steps 2217 --encoders target    # equal steps (e.g. another precision)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import evaluate_encoders, pixel_features, pretrain_within, score  # noqa: E402
from _report import machine_info, publish  # noqa: E402

from openjepa.config import load_config  # noqa: E402
from openjepa.eval.lowshot import LowShot  # noqa: E402

ENCODERS = ("target", "context", "random_init", "pixels")
FASHION_MNIST_SIDE = 28  # the dataset's own resolution: the pixel baseline is measured there
TARGET_ACCURACY = 0.86  # the targets: linear and k-NN top-1 of the target encoder (above raw pixels)...
TARGET_GAIN = 0.05  # ...each 5 points over the same architecture at random initialisation...
TARGET_LOW_SHOT_GAIN = 0.05  # ...and the 1 % linear probe 5 points over raw pixels and over random init
TRAINING_RECORD = "training.json"


def targets_met(results: dict) -> dict:
    """The targets, on the recipe's evaluation (mean pool)."""
    out: dict = {}
    target = results.get("target", {}).get("mean")
    if not target:
        return out
    random = results.get("random_init", {}).get("mean")
    pixels = results.get("pixels", {}).get("raw")
    for metric in ("linear_top1", "knn_top1"):
        out[f"{metric}_at_least_{TARGET_ACCURACY}"] = target[metric] >= TARGET_ACCURACY
        if random:
            gain = target[metric] - random[metric]
            out[f"{metric}_gain_over_random_init_points"] = round(100 * gain, 2)
            out[f"{metric}_gain_at_least_5_points"] = gain >= TARGET_GAIN
        if pixels:
            out[f"{metric}_above_raw_pixels"] = target[metric] > pixels[metric]
    few = target.get("low_shot")
    for name, base in (("raw_pixels", pixels), ("random_init", random)):
        if few and base and base.get("low_shot"):
            gain = few["linear_top1"] - base["low_shot"]["linear_top1"]
            out[f"low_shot_gain_over_{name}_points"] = round(100 * gain, 2)
            out[f"low_shot_gain_over_{name}_at_least_5_points"] = gain >= TARGET_LOW_SHOT_GAIN
    return out


def trained_run(cfg, run_dir: Path, args: argparse.Namespace) -> dict:
    """Pretrain within the budget and keep what the run did in RUN_DIR/training.json (so that an interrupted
    evaluation can be redone with --eval-only), or, with --eval-only, read it back."""
    record = run_dir / TRAINING_RECORD
    if args.eval_only:
        if not record.is_file():
            raise SystemExit(f"--eval-only: {record} not found; run the benchmark without --eval-only first")
        training = json.loads(record.read_text())
        minutes = None if args.steps else args.minutes
        if training.get("minutes") != minutes or training.get("fixed_steps") != args.steps:
            raise SystemExit(f"{record} is a run of {training.get('fixed_steps') or training.get('minutes')} "
                             f"{'steps' if training.get('fixed_steps') else 'minutes'}, not what was asked")
        return training
    if args.steps:  # equal steps: no time limit, schedules fitted to exactly that many steps
        training = {"minutes": None, "fixed_steps": args.steps,
                    **pretrain_within(cfg, steps=args.steps, calibration_steps=args.calibration_steps)}
    else:
        training = {"minutes": args.minutes, **pretrain_within(cfg, args.minutes, args.calibration_steps,
                                                                  fit_to_deadline=not args.fixed_length)}
    record.write_text(json.dumps(training, indent=2) + "\n")
    return training


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = args.run_dir or ("runs/quality_fmnist" + (f"-seed{args.seed}" if args.seed else ""))
    args.run_dir = run_dir
    overrides = [f"train.out_dir={run_dir}", f"train.seed={args.seed}", "eval.final_probe=false", *args.overrides]
    if args.data_path:
        overrides.append(f"data.path={args.data_path}")
    cfg = load_config(args.config, overrides)
    # The same three draws for every run and encoder (seeds 0, 1, 2): differences are the encoders', not the labels'.
    low_shot = LowShot(fraction=args.label_fraction, draws=args.draws) if args.label_fraction else None
    training = trained_run(cfg, Path(run_dir), args)
    started = time.monotonic()
    which = [e for e in args.encoders if e != "pixels"]
    results = evaluate_encoders(cfg, Path(run_dir), which, args.pools, low_shot) if which else {}
    if "pixels" in args.encoders:
        train = pixel_features(cfg, "train", FASHION_MNIST_SIDE)
        test = pixel_features(cfg, "test", FASHION_MNIST_SIDE)
        results["pixels"] = {"raw": score(train, test, cfg.eval, low_shot)}
    report = {
        "benchmark": "quality_fmnist",
        "command": "python benchmarks/quality_fmnist.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": None if args.steps else args.minutes,
        "seed": args.seed,
        "training": training,
        "evaluation_s": round(time.monotonic() - started, 1),
        "results": results,
        "targets": targets_met(results),
        "config": cfg.to_dict(),
        "machine": machine_info(load_key="load_average_at_end"),
    }
    publish(report, Path(args.out) if args.out else Path(run_dir) / "quality.json")
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. optim.lr=2e-3")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of the pretraining (default 20)")
    p.add_argument("-c", "--config", default="fashion_mnist", help="recipe name or YAML file (default fashion_mnist)")
    p.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST IDX files (default: the recipe's)")
    p.add_argument("--run-dir", default=None,
                   help="where the run and its checkpoint go (default runs/quality_fmnist, -seedN for seed N)")
    p.add_argument("--seed", type=int, default=0, help="train.seed of the run (the low-shot draws are fixed: seeds 0..draws-1)")
    p.add_argument("--label-fraction", type=float, default=0.01,
                   help="low-shot linear probe on this fraction of the training labels (0: none; default 0.01)")
    p.add_argument("--draws", type=int, default=3, help="low-shot draws (default 3)")
    p.add_argument("--out", default=None, help="JSON result file (default: RUN_DIR/quality.json)")
    p.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS), help="what to evaluate")
    p.add_argument("--pools", nargs="+", choices=("mean", "concat4"), default=["mean"],
                   help="mean (the recipe's evaluation, default); concat4 adds the last 4 blocks' pooled outputs")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the run already in --run-dir (its training.json) instead of pretraining again")
    p.add_argument("--calibration-steps", type=int, default=20, help="timed steps that calibrate the run length")
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead of a wall-clock budget (schedules fitted to them): "
                        "compares precisions or machines at equal steps")
    p.add_argument("--fixed-length", action="store_true",
                   help="keep the calibrated run length (the protocol of results before fit_to_deadline) instead "
                        "of re-planning it as the run goes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
