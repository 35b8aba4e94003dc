"""``openjepa eval linear|knn|attentive``: linear-probe, k-NN (or, in ``attentive.py``, attentive-probe) accuracy
of a checkpoint's frozen encoder (or of features saved by ``openjepa embed``), on all or a few of the training
labels, printed as one line and written as JSON."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import UserError
from ..eval.features import load_features, resolve_device
from ..eval.knn import knn_classify
from ..eval.lowshot import low_shot_knn, low_shot_linear
from ..eval.probe import linear_probe
from .attentive import add_method as add_attentive_method
from .encoder_args import add_encoder_arguments, features_for_split, load_for_args
from .lowshot import add_low_shot_arguments, low_shot_from_args, tagged

EXAMPLES = """examples:
  openjepa eval linear --checkpoint runs/fashion_mnist                # target encoder, train -> test split
  openjepa eval knn --checkpoint runs/fashion_mnist --k 20 --temperature 0.07
  openjepa eval linear --checkpoint runs/cifar10/jepa-ep100.pth.tar --pool concat4 --out probe.json
  openjepa eval knn --features-train feats_train.npz --features-test feats_test.npz
  openjepa eval linear --checkpoint runs/fashion_mnist --label-fraction 0.01 --draws 3   # the paper's 1 %

The probe is fit on the train split and scored on the test split; its weight decay is chosen on a held-out part
of the train split only (see docs/evaluation.md). The JSON goes next to the checkpoint (or to the training
features) unless --out says where.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="linear-probe, k-NN or attentive-probe accuracy of a frozen encoder",
        description="Evaluate a frozen encoder: a linear probe or weighted k-NN, trained on the train split and "
                    "scored on the test split.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    linear = methods.add_parser("linear", help="multinomial logistic regression on frozen features",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_arguments(linear)
    linear.add_argument("--holdout", type=float, default=None,
                        help="fraction of the TRAIN features held out to choose the weight decay "
                             "(default: eval.probe_holdout, 0.1)")
    linear.add_argument("--weight-decays", type=float, nargs="+", default=None, metavar="WD",
                        help="L2 strengths to choose from (default: eval.probe_weight_decays, 1e-6 ... 1)")
    linear.add_argument("--seed", type=int, default=None, help="seed of the held-out split (default: eval.seed)")
    linear.set_defaults(func=run)
    knn = methods.add_parser("knn", help="weighted k-nearest neighbours on L2-normalised features",
                             epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_arguments(knn)
    knn.add_argument("--k", type=int, default=None, help="neighbours per test sample (default: eval.knn_k, 20)")
    knn.add_argument("--temperature", type=float, default=None,
                     help="vote weight exp(similarity / T) (default: eval.knn_temperature, 0.07)")
    knn.set_defaults(func=run)
    add_attentive_method(methods)
    for sub in methods.choices.values():  # --debug is accepted after the method's name too
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def _common_arguments(p: argparse.ArgumentParser) -> None:
    add_encoder_arguments(p, split=None, required=False)
    p.add_argument("--features-train", metavar="FILE", default=None,
                   help="precomputed training features (.npz / .safetensors from `openjepa embed`) instead of "
                        "--checkpoint")
    p.add_argument("--features-test", metavar="FILE", default=None, help="precomputed test features")
    p.add_argument("--out", default=None, help="JSON result file (default: next to the checkpoint or features)")
    add_low_shot_arguments(p)


# -- inputs -----------------------------------------------------------------------------------------------------------
def _inputs(args: argparse.Namespace):
    """``(train features, test features, eval config, device, description, default JSON path)``."""
    from_files = args.features_train is not None or args.features_test is not None
    if from_files == (args.checkpoint is not None):
        raise UserError("give either --checkpoint, or both --features-train and --features-test")
    if from_files:
        if args.features_train is None or args.features_test is None:
            raise UserError("--features-train and --features-test go together; give both")
        train, test = load_features(args.features_train), load_features(args.features_test)
        meta = train.meta
        context = ", ".join(str(meta[k]) + suffix for k, suffix in (("which", " encoder"), ("pool", " pool"))
                            if meta.get(k))
        default_out = _stem_path(Path(args.features_train), f"{args.method}")
        return train, test, RunConfig().eval, resolve_device(args.device), context, default_out
    loaded, cfg, device = load_for_args(args)
    train = features_for_split(args, loaded, cfg, "train", device)
    test = features_for_split(args, loaded, cfg, "test", device)
    context = f"{loaded.which} encoder, {train.meta['pool']} pool"
    default_out = _stem_path(loaded.path, f"{args.method}-{loaded.which}-{train.meta['pool']}")
    return train, test, cfg.eval, device, context, default_out


def _stem_path(path: Path, tag: str) -> Path:
    """``runs/x/jepa-latest.pth.tar`` + ``linear`` -> ``runs/x/jepa-latest.linear.json``."""
    name = path.name
    for suffix in (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".safetensors", ".npz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.{tag}.json")


def _evaluate(args: argparse.Namespace, train, test, cfg, device):
    for name, feats in (("training", train), ("test", test)):
        if not feats.has_labels:
            raise UserError(f"the {name} features have no labels (label -1), so there is nothing to score; "
                            f"evaluate on a labelled dataset (a folder with one sub-folder per class)")
    if len(torch.unique(train.y)) < 2:
        raise UserError("the training features hold a single class; a classifier needs at least two")
    spec = low_shot_from_args(args, cfg.seed)
    if args.method == "knn":
        k = args.k if args.k is not None else cfg.knn_k
        temperature = args.temperature if args.temperature is not None else cfg.knn_temperature
        if k < 1 or temperature <= 0:
            raise UserError("--k must be >= 1 and --temperature > 0")
        if spec is not None:
            return low_shot_knn(train, test, spec, True, k=k, temperature=temperature, device=device)
        return knn_classify(train, test, k, temperature, device)
    holdout = args.holdout if args.holdout is not None else cfg.probe_holdout
    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be between 0 and 1 (e.g. 0.1), got {holdout}")
    decays = args.weight_decays or cfg.probe_weight_decays
    if min(decays) < 0:
        raise UserError("--weight-decays must be >= 0")
    seed = args.seed if args.seed is not None else cfg.seed
    if spec is not None:
        return low_shot_linear(train, test, spec, True, weight_decays=decays, holdout=holdout, seed=seed,
                               max_iter=cfg.probe_max_iter, device=device)
    return linear_probe(train, test, decays, holdout, seed, cfg.probe_max_iter, device, progress=True)


def run(args) -> int:
    started = time.perf_counter()
    low_shot_from_args(args)  # wrong low-shot flags fail before any feature is extracted
    train, test, cfg, device, context, default_out = _inputs(args)
    if train.dim != test.dim:
        raise UserError(f"the training features have {train.dim} dimensions but the test features {test.dim}; "
                        f"they must come from the same encoder and pooling")
    result = _evaluate(args, train, test, cfg, device)
    line = result.line(context)
    print(line)
    record = {**result.to_dict(), "line": line, "train": train.meta, "test": test.meta,
              "seconds": round(time.perf_counter() - started, 2)}
    out = Path(args.out) if args.out else tagged(default_out, low_shot_from_args(args, cfg.seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"result written to {out}")
    return 0
