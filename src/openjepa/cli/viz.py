"""``openjepa viz masks|features|run|predictions``: PNG pictures of masks, features, training curves and
predictions (drawn with Pillow; no plotting library needed)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import recipe_names
from ..errors import UserError
from ..eval.features import resolve_device
from ..pretrained import TrainedModel, load_trained
from ..run_folder import CURVES_PNG, load_run_config
from ..viz.draw import check_png_path, save_png
from ..viz.features import features_picture
from ..viz.masks import masks_picture
from ..viz.predictions import predictions_picture
from ..viz.run import render_run
from .data_args import add_data_arguments, data_config_from_args
from .encoder_args import CHECKPOINT_HELP, run_config
from .output import report_picture

EXAMPLES = """examples:
  openjepa viz masks --out masks.png                                 # the digits recipe's first training batch
  openjepa viz masks -c fashion_mnist mask.num_targets=2 --out m.png # try other mask settings before training
  openjepa viz features --checkpoint runs/digits --out pca.png       # PCA of the target encoder's patch features
  openjepa viz run runs/digits --out run.png                         # training curves of a run folder
  openjepa viz predictions --checkpoint runs/digits --out pred.png   # nearest neighbours of predictions

--checkpoint takes a checkpoint file or a run folder (its jepa-latest.pth.tar). See docs/visualisation.md for how
to read each picture.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "viz", help="draw masks, patch features, training curves or predictions as PNG pictures",
        description="Draw PNG pictures of what I-JEPA trains on and learns.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="picture", metavar="PICTURE", required=True)
    _masks_parser(kinds)
    _features_parser(kinds)
    _run_parser(kinds)
    _predictions_parser(kinds)
    for sub in kinds.choices.values():  # --debug is accepted after the picture's name too
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def _masks_parser(kinds) -> None:
    p = kinds.add_parser("masks", help="context and target blocks of a training step over its images",
                         description="The context and target blocks that training draws (same sampler, same seed) "
                                     "over the images of that training step.")
    p.add_argument("-c", "--config", default=None,
                   help=f"recipe name ({', '.join(recipe_names())}), YAML file or run folder (default: digits)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. mask.num_targets=2")
    add_data_arguments(p, split=None)
    p.add_argument("--count", type=int, default=8, help="images shown (default 8, at most one batch)")
    p.add_argument("--epoch", type=int, default=0, help="training epoch, from 0 (default 0)")
    p.add_argument("--step", type=int, default=0, help="step within the epoch, from 0 (default 0)")
    p.add_argument("--plain", action="store_true",
                   help="whole images (centre crop) instead of the step's random crops, under the same masks")
    p.add_argument("--columns", type=int, default=4, help="images per row (default 4)")
    p.add_argument("--out", default="masks.png", help="output PNG (default masks.png)")
    p.set_defaults(func=run_masks)


def _model_arguments(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("-c", "--config", default=None,
                   help="recipe name or YAML file whose data settings replace the run's (released checkpoints "
                        "record none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the run's settings, e.g. mask.num_targets=2 or data.path=DIR")
    add_data_arguments(p, split="test")
    p.add_argument("--seed", type=int, default=0, help="which images are picked (default 0)")
    p.add_argument("--device", default="auto", help="auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--out", default=out, help=f"output PNG (default {out})")


def _features_parser(kinds) -> None:
    p = kinds.add_parser("features", help="first 3 PCA components of patch features as RGB",
                         description="Each image next to its patch features' first three principal components "
                                     "shown as red, green and blue.")
    _model_arguments(p, "pca.png")
    p.add_argument("--count", type=int, default=8, help="images shown (default 8)")
    p.add_argument("--which", choices=("target", "context"), default="target",
                   help="the EMA target encoder (default) or the context encoder")
    p.add_argument("--columns", type=int, default=4, help="image pairs per row (default 4)")
    p.set_defaults(func=run_features)


def _run_parser(kinds) -> None:
    p = kinds.add_parser("run", help="training curves of a run folder",
                         description="Loss, schedules, throughput, mask sizes and online-monitor metrics from a "
                                     "run folder's metrics.csv and monitor.csv.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (train.out_dir of a pretraining run)")
    p.add_argument("--out", default=None, help="output PNG (default RUN_DIR/curves.png)")
    p.set_defaults(func=run_curves)


def _predictions_parser(kinds) -> None:
    p = kinds.add_parser("predictions", help="nearest neighbours of predicted and true target patches",
                         description="For a few images, the dataset patches nearest to the predictor's output and "
                                     "to the true target: a visual check that the predictor predicts content.")
    _model_arguments(p, "predictions.png")
    p.add_argument("--queries", type=int, default=6, help="query images, one row each (default 6)")
    p.add_argument("--bank", type=int, default=500,
                   help="other images whose patches are searched (default 500)")
    p.add_argument("--neighbours", "-k", type=int, default=5, help="neighbours shown per query (default 5)")
    p.set_defaults(func=run_predictions)


# -- running ------------------------------------------------------------------------------------------------------
def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")


def run_masks(args) -> int:
    check_png_path(args.out)
    _positive(count=args.count, columns=args.columns)
    if args.epoch < 0 or args.step < 0:
        raise UserError("--epoch and --step count from 0")
    config = load_run_config(args.config, args.overrides)
    config = dataclasses.replace(config, data=data_config_from_args(args, config.data))
    image = masks_picture(config, args.count, args.epoch, args.step, "plain" if args.plain else "training",
                          args.columns)
    return report_picture(save_png(image, args.out), image.size)


def _trained(args) -> TrainedModel:
    """The checkpoint's model under the run's settings, as `openjepa embed` / `eval` compose them (-c, then
    overrides, then --data)."""
    trained = load_trained(args.checkpoint, resolve_device(args.device))
    return trained.with_settings(run_config(args, trained.recorded))


def run_features(args) -> int:
    check_png_path(args.out)
    _positive(count=args.count, columns=args.columns)
    trained = _trained(args)
    image = features_picture(trained, trained.config.data, args.split, args.count, args.which, args.seed, args.columns)
    return report_picture(save_png(image, args.out), image.size)


def run_curves(args) -> int:
    out = Path(args.out) if args.out else Path(args.run_dir) / CURVES_PNG
    check_png_path(out)
    image = render_run(args.run_dir)
    return report_picture(save_png(image, out), image.size)


def run_predictions(args) -> int:
    check_png_path(args.out)
    _positive(queries=args.queries, bank=args.bank, neighbours=args.neighbours)
    trained = _trained(args)
    image = predictions_picture(trained, trained.config.data, args.split, args.queries, args.bank, args.neighbours,
                                args.seed)
    return report_picture(save_png(image, args.out), image.size)
