"""The I-JEPA paper's ablations at small scale: Fashion-MNIST, several seeds, at equal wall clock and equal steps.

Variants of the ``fashion_mnist`` recipe (plus any ``KEY=VALUE`` overrides, applied to all of them):

* ``ijepa``: the recipe itself: representation targets, multi-block masking;
* ``pixel_targets``: ``model.target=pixels``: the predictor regresses the (layer-normalised) pixels of the
  target patches instead of the target encoder's features (paper, Table 7: 66.9 vs 40.7 top-1, ViT-L/16);
* ``random_masking``: ``mask.strategy=random``: as many target and context patches as multi-block masking
  draws, scattered over the grid instead of in blocks (paper, Table 6: 54.2 vs 17.6 top-1, ViT-B/16);
* ``no_regularizer``: ``model.regularizer=none``: the paper's objective, without the recipe's anti-collapse term;
* ``paper``: also ``model.patch_embed_gain=null``: nothing beyond the paper (its initialisation too).

The paper's numbers are ImageNet-1k linear probes trained on 1% of the labels.

Two ways to make the comparison fair, both reported (``--match``):

* ``time``: every variant pretrains for ``--minutes`` of wall-clock time (as ``quality_fmnist.py``: calibration,
  setup, monitor and checkpoints included; evaluation excluded). A variant that skips work (pixel targets need
  no target encoder) then makes more steps;
* ``steps``: every variant makes exactly as many steps as the ``ijepa`` run of the same seed (schedules fitted
  the same way), whatever the time it takes.

With ``--minutes``, each run's length is re-planned as it goes so that its schedules end at the deadline
(``train.fit_to_deadline``); ``--fixed-length`` keeps the calibrated length, the protocol of results measured
before re-planning existed (a reused ``ijepa`` run must have been measured the same way).

Each run's target encoder is scored on the full 60k / 10k splits (or, with ``--eval-samples TRAIN TEST``, on fixed
stratified subsets, the same for every run): linear probe and k-NN, ``mean`` pool. For each
variant the mean over ``--seeds`` and the spread (max - min) are reported; an ablation "points the paper's way"
when I-JEPA's mean is above the variant's, and "beyond the seed spread" when the gap is larger than the larger of
the two spreads. ``--reuse-ijepa`` takes the ``ijepa`` runs from ``quality_fmnist.py`` results (one per seed, same
recipe, overrides and budget); ``--include`` adds the runs of an earlier ``ablations.py`` result.

Examples::

    python benchmarks/ablations.py --minutes 20 --seeds 0 1 --variants ijepa pixel_targets random_masking
    python benchmarks/ablations.py --minutes 20 --seeds 0 1 --variants ijepa pixel_targets --match time steps \\
        --reuse-ijepa runs/quality_fmnist/quality.json runs/quality_fmnist-seed1/quality.json
    python benchmarks/ablations.py --minutes 5 --seeds 0 --variants ijepa random_masking      # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import evaluate_encoders, pretrain_within  # noqa: E402
from _report import machine_info, publish  # noqa: E402

from openjepa.config import load_config  # noqa: E402

VARIANTS = {
    "ijepa": [],
    "pixel_targets": ["model.target=pixels"],
    "random_masking": ["mask.strategy=random"],
    "no_regularizer": ["model.regularizer=none"],
    "paper": ["model.regularizer=none", "model.patch_embed_gain=null"],
}
COMPARISONS = {"targets_features_vs_pixels": "pixel_targets", "masking_multiblock_vs_random": "random_masking"}
# The paper's numbers (ImageNet-1k, linear probe top-1 %, 1% of the labels) next to which ours are put.
PAPER = {
    "targets": {"table": 7, "features": 66.9, "pixels": 40.7},
    "masking": {"table": 6, "multiblock": 54.2, "random": 17.6},
}
METRICS = ("linear_top1", "knn_top1")


def run_key(variant: str, seed: int, match: str) -> str:
    return f"{variant}/seed{seed}/{match}"


def same_recipe(theirs: dict, ours: dict) -> bool:
    """Whether two configs describe the same training recipe (model, mask, data and optim; ``train`` holds the
    output folder and the seed, ``eval`` only the evaluation). A setting that one config lacks and the other
    leaves unset (None) is the same: a result written before the setting existed (``optim.accum_steps``,
    ``data.global_batch``) still describes the same run."""
    def set_values(section: dict | None) -> dict:
        return {k: v for k, v in (section or {}).items() if v is not None}
    return all(set_values(theirs.get(k)) == set_values(ours.get(k)) for k in ("model", "mask", "data", "optim"))


def reused_ijepa(path: Path, cfg_dict: dict, minutes: float, fit_to_deadline: bool) -> dict:
    """The ``ijepa`` run of one seed from a quality_fmnist.py result, after checking it measured the same thing."""
    report = json.loads(path.read_text())
    if report.get("minutes") != minutes:
        raise SystemExit(f"{path} was measured with a {report.get('minutes')}-minute budget, not {minutes}")
    if report["training"]["plan"].get("fit_to_deadline", False) != fit_to_deadline:
        raise SystemExit(f"{path} was measured with{'out' if fit_to_deadline else ''} re-planning to the deadline; "
                         f"pass {'--fixed-length' if fit_to_deadline else 'no --fixed-length'} to compare with it")
    if not same_recipe(report["config"], cfg_dict):
        raise SystemExit(f"{path} was measured with another recipe (model, mask, data or optim settings differ); "
                         f"run the ijepa variant here instead")
    return {"training": report["training"], "results": {"target": {"mean": report["results"]["target"]["mean"]}},
            "reused_from": str(path), "seed": report.get("seed", 0)}


def train_and_score(cfg, minutes: float | None, steps: int | None, calibration_steps: int,
                    samples: tuple[int, int] | None, fit_to_deadline: bool = True) -> dict:
    training = pretrain_within(cfg, minutes, calibration_steps, steps=steps, fit_to_deadline=fit_to_deadline)
    started = time.monotonic()
    results = evaluate_encoders(cfg, Path(cfg.train.out_dir), ["target"], ["mean"], samples=samples)
    return {"training": training, "results": results, "evaluation_s": round(time.monotonic() - started, 1)}


def summary(runs: dict, variant: str, match: str, seeds: list[int]) -> dict | None:
    """Mean, min, max and spread over seeds of the target encoder's scores of one variant."""
    found = [runs.get(run_key(variant, s, "time" if variant == "ijepa" else match)) for s in seeds]
    if not all(found):
        return None
    out = {"seeds": seeds, "steps": [r["training"]["steps"] for r in found]}
    for metric in METRICS:
        values = [r["results"]["target"]["mean"][metric] for r in found]
        out[metric] = {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values),
                       "spread": round(max(values) - min(values), 4), "values": values}
    return out


def direction(base: dict, ablated: dict) -> dict:
    """I-JEPA against an ablated variant: the gap of the means, and whether it points the paper's way and
    exceeds the seed spread of both."""
    out = {}
    for metric in METRICS:
        gap = base[metric]["mean"] - ablated[metric]["mean"]
        spread = max(base[metric]["spread"], ablated[metric]["spread"])
        out[metric] = {"ijepa": base[metric]["mean"], "ablated": ablated[metric]["mean"],
                       "gap_points": round(100 * gap, 2), "seed_spread_points": round(100 * spread, 2),
                       "paper_direction": gap > 0, "beyond_seed_spread": gap > spread}
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: dict[str, dict] = {}
    for path in args.include or []:
        earlier = json.loads(Path(path).read_text())
        if earlier.get("minutes") != args.minutes:
            raise SystemExit(f"{path} was measured with a {earlier.get('minutes')}-minute budget, not {args.minutes}")
        runs.update({k: {**v, "included_from": str(path)} for k, v in earlier["runs"].items()})
    reuse = dict(zip(args.seeds, args.reuse_ijepa or []))
    samples = tuple(args.eval_samples) if args.eval_samples else None
    for seed in args.seeds:
        for variant in args.variants:
            for match in (["time"] if variant == "ijepa" else args.match):
                key = run_key(variant, seed, match)
                if key in runs:
                    continue
                overrides = [*args.overrides, *VARIANTS[variant], f"train.seed={seed}", "eval.final_probe=false",
                             f"train.out_dir={args.run_root}/{variant}-seed{seed}-{match}"]
                if args.data_path:
                    overrides.append(f"data.path={args.data_path}")
                cfg = load_config(args.config, overrides)
                if variant == "ijepa" and seed in reuse:
                    runs[key] = reused_ijepa(Path(reuse[seed]), cfg.to_dict(), args.minutes,
                                                 not args.fixed_length)
                    continue
                steps = None
                if match == "steps":
                    base = runs.get(run_key("ijepa", seed, "time"))
                    if base is None:
                        raise SystemExit(f"--match steps needs the ijepa run of seed {seed}: list ijepa first in "
                                         f"--variants, or pass --reuse-ijepa / --include")
                    steps = base["training"]["steps"]
                runs[key] = {"variant": variant, "seed": seed, "match": match, "overrides": VARIANTS[variant],
                             **train_and_score(cfg, None if steps else args.minutes, steps, args.calibration_steps,
                                               samples, not args.fixed_length)}
    report = {"benchmark": "ablations", "command": "python benchmarks/ablations.py " + " ".join(argv),
              "minutes": args.minutes, "seeds": args.seeds, "eval_samples": args.eval_samples or "full splits",
              "runs": runs, "paper": PAPER,
              "machine": machine_info(load_key="load_average_at_end")}
    summaries = {f"{v}/{m}": summary(runs, v, m, args.seeds) for v in VARIANTS for m in ("time", "steps")
                 if not (v == "ijepa" and m == "steps")}
    report["summary"] = {k: v for k, v in summaries.items() if v is not None}
    base = report["summary"].get("ijepa/time")
    for name, ablated in COMPARISONS.items():
        for match in ("time", "steps"):
            other = report["summary"].get(f"{ablated}/{match}")
            if base and other:
                report.setdefault("directions", {})[f"{name}/{match}"] = direction(base, other)
    publish(report, Path(args.out) if args.out else Path(args.run_root) / "ablations.json")
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every variant")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of each pretraining (default 20)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["ijepa", "pixel_targets",
                                                                             "random_masking"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="train.seed of the runs (default 0 1)")
    p.add_argument("--match", nargs="+", choices=("time", "steps"), default=["time"],
                   help="equal wall clock, equal steps (the ijepa run's), or both (default time)")
    p.add_argument("-c", "--config", default="fashion_mnist", help="recipe name or YAML file (default fashion_mnist)")
    p.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST IDX files (default: the recipe's)")
    p.add_argument("--run-root", default="runs/ablations", help="one run folder per variant, seed and match")
    p.add_argument("--reuse-ijepa", nargs="+", default=None, metavar="QUALITY_JSON",
                   help="the ijepa runs, one quality_fmnist.py result per seed (in --seeds order)")
    p.add_argument("--include", nargs="+", default=None, metavar="ABLATIONS_JSON",
                   help="add the runs of earlier ablations.py results of the same budget")
    p.add_argument("--out", default=None, help="JSON result file (default: RUN_ROOT/ablations.json)")
    p.add_argument("--calibration-steps", type=int, default=20, help="timed steps that calibrate the run length")
    p.add_argument("--fixed-length", action="store_true",
                   help="keep the calibrated run length (the protocol of results before fit_to_deadline) instead "
                        "of re-planning it as the run goes")
    p.add_argument("--eval-samples", nargs=2, type=int, default=None, metavar=("TRAIN", "TEST"),
                   help="score on fixed stratified subsets of this many train / test images (the same for every "
                        "run; default: the full 60k / 10k splits)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
