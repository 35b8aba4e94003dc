"""The low-shot flags shared by ``openjepa eval linear|knn|attentive`` and ``openjepa finetune``:
``--labels-per-class N`` or ``--label-fraction F``, ``--draws K``, ``--draw-seed S``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..eval.lowshot import LowShot


def add_low_shot_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "low-shot", "train on a stratified random subset of the training labels (the test split is always whole)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--labels-per-class", type=int, default=None, metavar="N",
                        help="keep N labelled training images of every class")
    choice.add_argument("--label-fraction", type=float, default=None, metavar="F",
                        help="keep the fraction F of every class (at least one image each); 0.01 is the I-JEPA "
                             "paper's 1%% protocol")
    group.add_argument("--draws", type=int, default=None, metavar="K",
                       help="repeat with K different random subsets and report mean +- std (default 1)")
    group.add_argument("--draw-seed", type=int, default=None, metavar="S",
                       help="draw k uses seed S + k (default: eval.seed, 0)")


def low_shot_from_args(args: argparse.Namespace, default_seed: int = 0) -> LowShot | None:
    """The :class:`LowShot` the flags describe, or None for the whole training set."""
    per_class, fraction = args.labels_per_class, args.label_fraction
    if per_class is None and fraction is None:
        if args.draws is not None or args.draw_seed is not None:
            raise UserError("--draws and --draw-seed go with --labels-per-class N or --label-fraction F")
        return None
    seed = args.draw_seed if args.draw_seed is not None else default_seed
    return LowShot(per_class, fraction, args.draws if args.draws is not None else 1, seed)


def low_shot_tag(spec: LowShot | None) -> str:
    """A file-name tag: ``10pc`` (10 per class), ``1pct`` (1 %), or ``""`` without low-shot."""
    if spec is None:
        return ""
    if spec.labels_per_class is not None:
        return f"{spec.labels_per_class}pc"
    return f"{100 * spec.fraction:g}pct"


def tagged(path: Path, spec: LowShot | None) -> Path:
    """``x.linear.json`` -> ``x.linear.1pct.json`` for a low-shot result (so it does not replace the full one)."""
    tag = low_shot_tag(spec)
    return path.with_name(f"{path.name.removesuffix('.json')}.{tag}.json") if tag else path
