"""``openjepa embed``: pooled features of a dataset split through a checkpoint's encoder, to .npz or .safetensors."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import UserError
from ..eval.features import save_features
from .encoder_args import add_encoder_arguments, features_for_split, load_for_args

EXAMPLES = """examples:
  openjepa embed --checkpoint runs/digits --out feats_test.npz                  # test split, target encoder
  openjepa embed --checkpoint runs/digits --split train --out feats_train.safetensors
  openjepa embed --checkpoint runs/fmnist/jepa-ep50.pth.tar --pool concat4 --which context --out f.npz
  openjepa embed --checkpoint IN1K-vit.h.14-300e.pth.tar --data /data/imagenet/val --out val.npz

--checkpoint takes a checkpoint file or a run folder (its latest checkpoint). The dataset is the one the run
was trained on unless --data (or -c with a recipe / YAML file) says otherwise. Files hold `features` [N, F]
(float32), `labels` [N] (int64, -1 where unknown) and a JSON record of how they were made.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="write the pooled features of a dataset split to .npz or .safetensors",
        description="Run a checkpoint's encoder over a dataset split and save the pooled features and labels.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_encoder_arguments(p, split="test")
    p.add_argument("--out", required=True, help="output file: .npz or .safetensors")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".npz", ".safetensors"):
        raise UserError(f"--out {out} must end in .npz or .safetensors")
    started = time.perf_counter()
    loaded, cfg, device = load_for_args(args)
    features = features_for_split(args, loaded, cfg, args.split, device)
    save_features(features, out)
    labelled = "labelled" if features.has_labels else "unlabelled"
    print(f"wrote {len(features)} {labelled} {features.meta['pool']}-pooled features of dimension {features.dim} "
          f"({cfg.data.dataset} {args.split}, {loaded.which} encoder) to {out} in "
          f"{time.perf_counter() - started:.1f}s")
    return 0
