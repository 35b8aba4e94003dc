"""Screening: train one variant of a recipe for a fixed number of steps, then score its frozen target encoder.

Short runs on a slow machine cannot afford the full evaluation of ``quality_fmnist.py`` for every idea, so this
script answers one cheaper question per call: with this change, does a short run learn anything the untrained
network does not already give?

1. The recipe (default ``fashion_mnist``) plus the given ``KEY=VALUE`` overrides is pretrained for exactly
   ``--steps`` steps. The learning-rate, weight-decay and EMA schedules are fitted to end at that step and the
   warm-up keeps the recipe's share of the schedule (``_budget.fixed_length``; ``fashion_mnist``: 10 %), so a
   short run goes through its whole schedule instead of stopping early in a long one. Do not pass
   ``optim.warmup_epochs`` to get that share: it is applied already (an override is read as the new share of the
   recipe's ``optim.epochs``). The online monitor and the final probe are switched off: their time would count
   as training time, and the scores below replace them.
2. The target encoder (or, with ``--random``, the same architecture at random initialisation: the reference a
   trained variant must beat) is scored on fixed stratified subsets of the official splits (default 10,000
   training and 5,000 test images, the same images for every variant): k-NN top-1 (k=20, T=0.07, cosine), a
   linear probe's top-1, and two label-free collapse measures, the centred effective rank (RankMe) and the
   spread of the normalised features.
3. One JSON line is appended to ``--out`` (default ``benchmarks/results/screen_fmnist.jsonl``): the variant's
   name and overrides, steps, training seconds, final loss, the scores, the protocol and the machine.

The lines in ``benchmarks/results/screen_fmnist.jsonl`` (docs/training.md, "Regularisers") were measured with
this protocol by the scratch script this one replaces; with this one they are, for example::

    python benchmarks/screen_variants.py base600 model.regularizer=none train.threads=1 --steps 600
    python benchmarks/screen_variants.py vic1 model.regularizer=vicreg model.regularizer_weight=1.0 \\
        train.threads=1 --steps 600
    python benchmarks/screen_variants.py vic03 model.regularizer=vicreg model.regularizer_weight=0.3 \\
        train.threads=1 --steps 600
    python benchmarks/screen_variants.py viccont1 model.regularizer=vicreg model.regularizer_weight=1.0 \\
        model.regularizer_on=content train.threads=1 --steps 600
    python benchmarks/screen_variants.py sig05 model.regularizer=sigreg model.regularizer_weight=0.05 \\
        train.threads=1 --steps 600
    python benchmarks/screen_variants.py random_init --random train.threads=1
    python benchmarks/screen_variants.py vic1 --eval-only                # score runs/screen/vic1 again
    python benchmarks/screen_variants.py t8_base train.threads=1 --minutes 8   # equal wall clock instead

(The recorded lines also list ``optim.warmup_epochs=0.064``: the 10 % warm-up of 600 steps, which the scratch
script had to be given and which this one sets by itself.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import pretrain_within
from _report import machine_info

from openjepa.config import RunConfig, load_config
from openjepa.data import build_eval_dataset
from openjepa.eval import (
    Features,
    extract_features,
    feature_std,
    knn_classify,
    linear_probe,
    load_encoder,
    random_init_like,
    rankme,
    resolve_device,
    stratified_subset,
)
from openjepa.eval.subsets import dataset_labels
from openjepa.models.vit import VisionTransformer

# The screening protocol. Fixed here rather than read from the recipe's eval section, so that lines appended by
# different calls (and different recipes' overrides) stay comparable.
TRAIN_SUBSET_SEED = 1  # the subsets are drawn once per seed: every variant is scored on the same images
TEST_SUBSET_SEED = 2
KNN_K = 20
KNN_TEMPERATURE = 0.07
# A shorter weight-decay sweep and fewer L-BFGS iterations than openjepa.eval's defaults: a screening probe has to
# rank variants, not report their best accuracy, and it runs after every short training run.
PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)
PROBE_HOLDOUT = 0.1
PROBE_MAX_ITER = 100
EXTRACT_BATCH = 512
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "screen_fmnist.jsonl"


# -- configuration -----------------------------------------------------------------------------------------------
def run_config(args: argparse.Namespace) -> RunConfig:
    """The recipe with the variant's overrides. The monitor and the final probe are switched off first, so that
    the variant's own overrides can still switch them back on."""
    fixed = [f"train.out_dir={run_dir(args)}", "eval.online_every=0", "eval.final_probe=false"]
    if args.data_path:
        fixed.append(f"data.path={args.data_path}")
    return load_config(args.config, [*fixed, *args.overrides])


def run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_root) / args.name


def protocol(args: argparse.Namespace, cfg: RunConfig) -> str:
    """One sentence that says how the line was measured (kept in the line: the JSONL outlives this script)."""
    if args.random:
        what = f"random-init twin of the recipe's encoder (seed {cfg.eval.seed})"
    else:
        share = cfg.optim.warmup_epochs / cfg.optim.epochs
        if args.eval_only:
            length = "an existing run"
        elif args.minutes is not None:
            length = f"{args.minutes:g} minutes of wall clock, run length calibrated"
        else:
            length = f"{args.steps} steps"
        what = (f"{length} (schedules end there, warm-up {share:.0%}), batch {cfg.data.batch_size}, "
                f"target encoder")
    return (f"{what}, mean-pooled; k-NN (k={KNN_K}) and linear probe on {args.ntrain} train / {args.ntest} test "
            f"stratified subsets of the official splits")


# -- training ----------------------------------------------------------------------------------------------------
def pretrain(cfg: RunConfig, steps: int | None, minutes: float | None, fixed_length: bool = False) -> dict:
    """Train ``cfg`` for exactly ``steps`` steps, or for ``minutes`` of wall clock (calibration included; the
    length re-planned as the run goes so that the schedules end at the deadline, or with ``fixed_length`` the
    calibrated length), in a folder started afresh; what the run did."""
    done = (pretrain_within(cfg, steps=steps) if minutes is None
            else pretrain_within(cfg, minutes=minutes, fit_to_deadline=not fixed_length))
    return {"steps": done["steps"], "schedule_completed": done["schedule_completed"],
            "stop_reason": done["stop_reason"], "train_s": done["total_s"], "final_loss": done["final_loss"],
            "warmup_epochs": done["plan"]["warmup_epochs"], "fit_to_deadline": done["plan"]["fit_to_deadline"]}


def encoder_to_score(args: argparse.Namespace, cfg: RunConfig) -> torch.nn.Module:
    """The run's target encoder, or a fresh network of the recipe's architecture for ``--random`` (no run is
    needed for it: the architecture comes from the config)."""
    if args.random:
        return random_init_like(VisionTransformer(**cfg.model.encoder_kwargs()), cfg.eval.seed)
    return load_encoder(run_dir(args), "target")


# -- evaluation --------------------------------------------------------------------------------------------------
def subset_features(encoder: torch.nn.Module, cfg: RunConfig, split: str, size: int, seed: int,
                    device: torch.device) -> Features:
    """Mean-pooled features of a stratified subset of ``split`` (every class in its share of the split)."""
    dataset = build_eval_dataset(cfg.data, cfg.model, split)
    labels = dataset_labels(dataset)  # read without decoding any image
    indices = stratified_subset(labels, len(dataset), size, seed)
    return extract_features(encoder, Subset(dataset, indices.tolist()), "mean", EXTRACT_BATCH, device,
                            desc=f"features: {split}")


def centred(train: Features, test: Features) -> tuple[Features, Features]:
    """Both sets minus the training mean. Pooled ViT features share a large mean vector that cosine k-NN cannot
    see past; the gap between plain and centred k-NN says how much of the spread that hides (a diagnostic)."""
    mean = train.x.mean(dim=0)
    return Features(train.x - mean, train.y), Features(test.x - mean, test.y)


def score(encoder: torch.nn.Module, cfg: RunConfig, ntrain: int, ntest: int, device: torch.device) -> dict:
    """k-NN (plain and centred) and linear-probe top-1 on the test subset; RankMe and feature spread of the
    training subset's features (label-free: they fall when the representation collapses)."""
    train = subset_features(encoder, cfg, "train", ntrain, TRAIN_SUBSET_SEED, device)
    test = subset_features(encoder, cfg, "test", ntest, TEST_SUBSET_SEED, device)
    knn = knn_classify(train, test, KNN_K, KNN_TEMPERATURE, device)
    knn_c = knn_classify(*centred(train, test), KNN_K, KNN_TEMPERATURE, device)
    lin = linear_probe(train, test, PROBE_WEIGHT_DECAYS, PROBE_HOLDOUT, cfg.eval.seed, PROBE_MAX_ITER, device)
    return {"knn": round(knn.top1, 4), "knn_centred": round(knn_c.top1, 4), "linear": round(lin.top1, 4),
            "rankme": round(rankme(train.x), 1), "feat_std": round(feature_std(train.x), 4)}


def append_line(row: dict, out: Path) -> None:
    """Print ``row`` and append it to ``out`` as one JSON line (appending: a screen is built up call by call)."""
    line = json.dumps(row)
    print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(line + "\n")


# -- command line ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    cfg = run_config(args)
    row: dict = {"name": args.name, "overrides": args.overrides, "random_init": args.random}
    if not (args.random or args.eval_only):
        if args.minutes is None:
            row["steps_arg"] = args.steps
        else:
            row["minutes_arg"] = args.minutes
        row.update(pretrain(cfg, args.steps, args.minutes, args.fixed_length))
    if cfg.train.threads:  # the training run set it for itself; --random and --eval-only score under it too
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    row.update(score(encoder_to_score(args, cfg), cfg, args.ntrain, args.ntest, device))
    row["total_s"] = round(time.monotonic() - started, 1)
    row["protocol"] = protocol(args, cfg)
    row["machine"] = machine_info(device)
    append_line(row, Path(args.out))
    return row


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the variant's name: its run folder (RUN_ROOT/NAME) and the 'name' of its line")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings that make the variant, e.g. model.regularizer=none train.threads=1")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=600,
                        help="training steps; the schedules end exactly there (default 600)")
    length.add_argument("--minutes", type=float, default=None,
                        help="instead of --steps: a wall-clock budget (equal-time comparisons: a cheaper variant "
                             "makes more steps)")
    p.add_argument("--fixed-length", action="store_true",
                   help="with --minutes: keep the calibrated run length (the protocol of lines written before "
                        "fit_to_deadline) instead of re-planning it as the run goes")
    p.add_argument("-c", "--config", default="fashion_mnist", help="recipe name or YAML file (default fashion_mnist)")
    p.add_argument("--data-path", default=None, help="the dataset's folder, when not the recipe's")
    p.add_argument("--ntrain", type=int, default=10000, help="images of the stratified training subset (default 10000)")
    p.add_argument("--ntest", type=int, default=5000, help="images of the stratified test subset (default 5000)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--random", action="store_true",
                      help="no training: score the recipe's architecture at random initialisation (seed eval.seed)")
    only.add_argument("--eval-only", action="store_true", help="no training: score the run already in RUN_ROOT/NAME")
    p.add_argument("--run-root", default="runs/screen", help="folder of the run folders (default runs/screen)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="JSONL file the result line is appended to (default benchmarks/results/screen_fmnist.jsonl)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.minutes is not None and not 0 < args.minutes < float("inf"):
        p.error("--minutes must be a positive number")
    return args


if __name__ == "__main__":
    main()
