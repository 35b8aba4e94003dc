"""The I-JEPA paper's ablations at small scale: Fashion-MNIST, the same wall-clock budget for every variant.

Variants of the ``fashion_mnist`` recipe (plus any ``KEY=VALUE`` overrides, applied to all of them):

* ``ijepa``: the recipe itself: representation targets, multi-block masking;
* ``pixel_targets``: ``model.target=pixels``: the predictor regresses the (layer-normalised) pixels of the
  target patches instead of the target encoder's features (paper, Table 7: 66.9 vs 40.7 top-1, ViT-L/16);
* ``random_masking``: ``mask.strategy=random``: as many target and context patches as multi-block masking
  draws, scattered over the grid instead of in blocks (paper, Table 6: 54.2 vs 17.6 top-1, ViT-B/16).

The paper's ablation numbers are ImageNet-1k linear probes trained on 1% of the labels.

Each variant pretrains for ``--minutes`` of wall-clock time (as ``quality_fmnist.py``: calibration, setup,
monitor and checkpoints included; evaluation excluded), then its target and context encoders are scored on the
full 60k / 10k splits: linear probe and k-NN, mean pool. ``--reuse-ijepa QUALITY_JSON`` takes the ``ijepa``
variant from a ``quality_fmnist.py`` result of the same recipe, overrides and budget instead of training it again.

Examples::

    python benchmarks/ablations.py --minutes 20
    python benchmarks/ablations.py --minutes 20 --reuse-ijepa runs/quality_fmnist/quality.json
    python benchmarks/ablations.py --minutes 5 --variants ijepa random_masking
    python benchmarks/ablations.py --variants ijepa --reuse-ijepa runs/quality_fmnist/quality.json \
        --include runs/ablations/ablated_variants.json      # combine with variants measured earlier
"""

from __future__ import annotations

import argparse
import json
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
}
# The paper's numbers (ImageNet-1k, linear probe top-1 %) next to which ours are put.
PAPER = {
    "targets": {"table": 7, "features": 66.9, "pixels": 40.7},
    "masking": {"table": 6, "multiblock": 54.2, "random": 17.6},
}


def reused_ijepa(path: Path, cfg_dict: dict, minutes: float) -> dict:
    """The ``ijepa`` variant from a quality_fmnist.py result, after checking it measured the same thing."""
    report = json.loads(path.read_text())
    if report.get("minutes") != minutes:
        raise SystemExit(f"{path} was measured with a {report.get('minutes')}-minute budget, not {minutes}")
    theirs = {k: v for k, v in report["config"].items() if k not in ("train", "eval")}
    ours = {k: v for k, v in cfg_dict.items() if k not in ("train", "eval")}
    if theirs != ours:
        raise SystemExit(f"{path} was measured with another recipe (model, mask, data or optim settings differ); "
                         f"run the ijepa variant here instead")
    results = {name: {"mean": report["results"][name]["mean"]} for name in ("target", "context")}
    return {"training": report["training"], "results": results, "reused_from": str(path)}


def included_variants(path: Path, minutes: float) -> dict:
    """The variants of an earlier ablations.py result (e.g. the ablated variants measured in one invocation, the
    I-JEPA one reused in another), checked to be of the same budget."""
    report = json.loads(path.read_text())
    if report.get("minutes") != minutes:
        raise SystemExit(f"{path} was measured with a {report.get('minutes')}-minute budget, not {minutes}")
    return {name: {**variant, "included_from": str(path)} for name, variant in report["variants"].items()}


def direction(results: dict, base: str, ablated: str) -> dict:
    """Linear and k-NN top-1 of the target encoder in both variants, and whether the base one wins."""
    a, b = results[base]["results"]["target"]["mean"], results[ablated]["results"]["target"]["mean"]
    return {
        f"{base}_linear": a["linear_top1"], f"{ablated}_linear": b["linear_top1"],
        f"{base}_knn": a["knn_top1"], f"{ablated}_knn": b["knn_top1"],
        "same_direction_as_paper_linear": a["linear_top1"] > b["linear_top1"],
        "same_direction_as_paper_knn": a["knn_top1"] > b["knn_top1"],
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants: dict[str, dict] = included_variants(Path(args.include), args.minutes) if args.include else {}
    for name in args.variants:
        overrides = [*args.overrides, *VARIANTS[name], f"train.out_dir={args.run_root}/{name}",
                     "eval.final_probe=false"]
        if args.data_path:
            overrides.append(f"data.path={args.data_path}")
        cfg = load_config(args.config, overrides)
        if name == "ijepa" and args.reuse_ijepa:
            variants[name] = reused_ijepa(Path(args.reuse_ijepa), cfg.to_dict(), args.minutes)
            continue
        training = pretrain_within(cfg, args.minutes, args.calibration_steps)
        started = time.monotonic()
        results = evaluate_encoders(cfg, Path(cfg.train.out_dir), ["target", "context"], ["mean"])
        variants[name] = {"training": training, "results": results,
                          "evaluation_s": round(time.monotonic() - started, 1), "overrides": VARIANTS[name]}
    report = {"benchmark": "ablations", "command": "python benchmarks/ablations.py " + " ".join(argv),
              "minutes": args.minutes, "variants": variants, "paper": PAPER,
              "machine": machine_info(load_key="load_average_at_end")}
    if "ijepa" in variants and "pixel_targets" in variants:
        report["targets_features_vs_pixels"] = direction(variants, "ijepa", "pixel_targets")
    if "ijepa" in variants and "random_masking" in variants:
        report["masking_multiblock_vs_random"] = direction(variants, "ijepa", "random_masking")
    publish(report, Path(args.out) if args.out else Path(args.run_root) / "ablations.json")
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every variant")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of each pretraining (default 20)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("-c", "--config", default="fashion_mnist", help="recipe name or YAML file (default fashion_mnist)")
    p.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST IDX files (default: the recipe's)")
    p.add_argument("--run-root", default="runs/ablations", help="one run folder per variant goes here")
    p.add_argument("--reuse-ijepa", default=None, metavar="QUALITY_JSON",
                   help="take the ijepa variant from a quality_fmnist.py result of the same recipe and budget")
    p.add_argument("--include", default=None, metavar="ABLATIONS_JSON",
                   help="add the variants of an earlier ablations.py result of the same budget")
    p.add_argument("--out", default=None, help="JSON result file (default: RUN_ROOT/ablations.json)")
    p.add_argument("--calibration-steps", type=int, default=20, help="timed steps that calibrate the run length")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
