"""``openjepa eval attentive``: a cross-attention pooler + linear classifier trained on the frozen patch tokens of a
checkpoint's encoder, its learning rate and weight decay chosen on held-out training images."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..data import build_eval_dataset
from ..errors import UserError
from ..eval.attentive import AttentiveConfig, evaluate_attentive, with_overrides
from .encoder_args import add_encoder_arguments, encoder_model_config, load_for_args
from .lowshot import add_low_shot_arguments, low_shot_from_args, tagged

EXAMPLES = """examples:
  openjepa eval attentive --checkpoint runs/fashion_mnist                   # target encoder, train -> test split
  openjepa eval attentive --checkpoint runs/fashion_mnist --label-fraction 0.01 --draws 3
  openjepa eval attentive --checkpoint runs/digits --queries 4 --epochs 30 --lrs 1e-3 3e-3

The probe's learning rate and weight decay are chosen on a held-out part of the train split (see
docs/evaluation.md, "Attentive probe"); the test split is scored once, at the end.
"""

DEFAULTS = AttentiveConfig()


def add_method(methods) -> None:
    """Register ``attentive`` among the methods of ``openjepa eval``."""
    p = methods.add_parser("attentive", help="cross-attention pooler + linear classifier on frozen patch tokens",
                           description="Attentive probe: learnt queries attend over the frozen encoder's patch "
                                       "tokens; a linear classifier reads their output.",
                           epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder_arguments(p, split=None, required=True)
    p.add_argument("--queries", type=int, default=None, help=f"learnt query tokens (default {DEFAULTS.num_queries})")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default: the encoder's)")
    p.add_argument("--epochs", type=int, default=None, help=f"passes over the training images per fit "
                                                            f"(default {DEFAULTS.epochs})")
    p.add_argument("--min-steps", type=int, default=None,
                   help=f"at least this many steps per fit on small training sets (default {DEFAULTS.min_steps})")
    p.add_argument("--probe-batch-size", type=int, default=None,
                   help=f"mini-batch of the probe's training (default {DEFAULTS.batch_size})")
    p.add_argument("--lrs", type=float, nargs="+", default=None, metavar="LR",
                   help=f"peak learning rates to choose from (default {' '.join(map(str, DEFAULTS.lrs))})")
    p.add_argument("--weight-decays", type=float, nargs="+", default=None, metavar="WD",
                   help=f"AdamW weight decays to choose from (default "
                        f"{' '.join(map(str, DEFAULTS.weight_decays))})")
    p.add_argument("--holdout", type=float, default=None,
                   help=f"fraction of the TRAIN images held out to choose them (default {DEFAULTS.holdout})")
    p.add_argument("--seed", type=int, default=None, help="held-out split, initialisation, batch order "
                                                          "(default: eval.seed)")
    p.add_argument("--cache-gb", type=float, default=None,
                   help=f"keep the frozen tokens in memory up to this size (default {DEFAULTS.cache_gb}); "
                        f"larger sets are recomputed for every batch")
    p.add_argument("--out", default=None, help="JSON result file (default: next to the checkpoint)")
    add_low_shot_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    started = time.perf_counter()
    if args.pool is not None:
        raise UserError("--pool does not apply to the attentive probe: it attends over all patch tokens")
    low_shot_from_args(args)  # wrong low-shot flags fail before any image is read
    loaded, cfg, device = load_for_args(args)
    probe_cfg = with_overrides(
        DEFAULTS, num_queries=args.queries, num_heads=args.heads, epochs=args.epochs, min_steps=args.min_steps,
        batch_size=args.probe_batch_size, lrs=tuple(args.lrs) if args.lrs else None,
        weight_decays=tuple(args.weight_decays) if args.weight_decays else None, holdout=args.holdout,
        seed=args.seed if args.seed is not None else cfg.eval.seed, cache_gb=args.cache_gb)
    spec = low_shot_from_args(args, cfg.eval.seed)
    model_cfg = encoder_model_config(cfg, loaded.encoder)
    train_ds = build_eval_dataset(cfg.data, model_cfg, "train")
    test_ds = build_eval_dataset(cfg.data, model_cfg, "test")
    batch_size = args.batch_size or cfg.eval.batch_size
    if batch_size < 1 or args.workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    result = evaluate_attentive(loaded.encoder, train_ds, test_ds, probe_cfg, spec, batch_size, device,
                                progress=True, num_workers=args.workers)
    line = result.line(f"{loaded.which} encoder")
    print(line)
    source = {"checkpoint": str(loaded.path), "which": loaded.which, "epoch": loaded.epoch, "step": loaded.step,
              "dataset": cfg.data.dataset, "data_path": cfg.data.path}
    record = {**result.to_dict(), "line": line, "settings": probe_cfg.__dict__, "source": source,
              "seconds": round(time.perf_counter() - started, 2)}
    name = loaded.path.name.removesuffix(".pth.tar").removesuffix(".pth")
    out = Path(args.out) if args.out else tagged(loaded.path.with_name(f"{name}.attentive-{loaded.which}.json"), spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=list) + "\n")
    print(f"result written to {out}")
    return 0
