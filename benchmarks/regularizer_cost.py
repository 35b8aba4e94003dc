"""What the anti-collapse regularisers cost per training step: the same recipe with ``model.regularizer`` none
(the paper's objective), vicreg and sigreg, timed in one process on the same batches.

Each variant is its own model (same initialisation) and optimiser; the variants take turns in blocks of
``--batches`` steps over the same pre-drawn batches (images and masks), so that all of them see the same machine
state, and the first round is untimed. Reports the median and mean step time of each variant and its ratio to
``none``. Prints one JSON object and writes it to ``--out``.

Example (docs/benchmarks.md, "Quality")::

    python benchmarks/regularizer_cost.py --out benchmarks/results/regularizer_cost_fmnist.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_info, publish  # noqa: E402

from openjepa.config import load_config  # noqa: E402
from openjepa.data import build_pretrain_loader  # noqa: E402
from openjepa.ijepa import build_ijepa  # noqa: E402
from openjepa.regularizers import KINDS  # noqa: E402
from openjepa.step import make_optimizer, train_step  # noqa: E402


def fixed_batches(cfg, n: int) -> list:
    """The first ``n`` batches (images and masks) of the recipe's loader, epoch 0."""
    data = build_pretrain_loader(cfg.data, cfg.model, cfg.mask, cfg.train.seed)
    data.set_epoch(0)
    batches = []
    for batch in data.loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    batches = fixed_batches(cfg, args.batches)
    variants = {}
    for kind in args.kinds:
        torch.manual_seed(cfg.train.seed)
        model = build_ijepa(dataclasses.replace(cfg.model, regularizer=kind))
        variants[kind] = (model, make_optimizer(model))
    times: dict[str, list[float]] = {kind: [] for kind in variants}
    for rnd in range(args.rounds + 1):  # round 0 warms up every variant
        for kind, (model, optimizer) in variants.items():
            for batch in batches:
                t0 = time.perf_counter()
                train_step(model, optimizer, batch.images, batch.context, batch.targets, cfg.optim.lr,
                           cfg.optim.weight_decay, cfg.optim.ema[0])
                if rnd:
                    times[kind].append(time.perf_counter() - t0)
    base = statistics.median(times["none"]) if "none" in times else None
    results = {kind: {"median_ms": round(1e3 * statistics.median(t), 1), "mean_ms": round(1e3 * statistics.fmean(t), 1),
                      "steps": len(t),
                      "ratio_to_none": round(statistics.median(t) / base, 3) if base else None}
               for kind, t in times.items()}
    report = {"benchmark": "regularizer_cost",
              "command": "python benchmarks/regularizer_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "recipe": args.config, "overrides": args.overrides, "batch_size": cfg.data.batch_size,
              "batches": args.batches, "rounds": args.rounds, "results": results,
              "machine": machine_info(load_key="load_average_at_end")}
    publish(report, Path(args.out))
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("-c", "--config", default="fashion_mnist", help="recipe name or YAML file")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="regularisers to time")
    p.add_argument("--batches", type=int, default=10, help="steps per block (the same batches every round)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", default="benchmarks/results/regularizer_cost.json", help="JSON result file")
    args = p.parse_args(argv)
    if args.batches < 1 or args.rounds < 1:
        p.error("--batches and --rounds must be >= 1")
    return args


if __name__ == "__main__":
    main()
