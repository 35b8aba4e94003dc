"""``openjepa predict``: the classes a fine-tuned classifier predicts for a folder of images, as CSV."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..eval.features import resolve_device
from ..finetune.predict import predict_folder, write_predictions
from ..pretrained import read_classifier

EXAMPLES = """examples:
  openjepa predict --model runs/digits-finetune --images my_photos/ --out predictions.csv
  openjepa predict --model runs/flowers-ft/finetune-best.pth.tar --images new/ --out p.csv --top-k 3

--model is a fine-tuning run folder (its best checkpoint) or a fine-tuning checkpoint. Every image under --images
(any depth) gets one row: path (relative to the folder), class, probability (and class_2 ... with --top-k).
Unreadable files are listed on stderr and left out.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify a folder of images with a fine-tuned classifier (CSV)",
                              description="Predict the classes of a folder of images with a fine-tuned classifier.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="fine-tuning run folder or checkpoint (openjepa finetune)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--top-k", type=int, default=1, help="classes per image, most probable first (default 1)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="image-decoding processes (default 0: this one)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise UserError("--top-k and --batch-size must be >= 1, --workers >= 0")
    model, info = read_classifier(args.model)
    predictions, unreadable = predict_folder(model, info, args.images, args.top_k, args.batch_size,
                                             resolve_device(args.device), args.workers)
    out = write_predictions(predictions, args.out)
    for path in unreadable:
        print(f"openjepa predict: warning: could not read {path}; left out", file=sys.stderr)
    print(f"predicted {len(predictions)} images ({len(info.classes)} classes) -> {out}"
          + (f"; {len(unreadable)} unreadable" if unreadable else ""))
    return 0
