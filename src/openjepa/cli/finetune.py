"""``openjepa finetune``: fine-tune a pretrained encoder (plus a linear head) on labelled images."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from ..config import apply_overrides
from ..errors import UserError
from ..finetune.config import FinetuneConfig, finetune_config_from_dict, finetune_recipe_names, load_finetune_values
from ..finetune.draws import StoppedDraw, finetune_draws, with_low_shot
from ..finetune.trainer import FinetuneResult, finetune
from ..interop.pretrained import load_pretrained
from ..pretrained import PretrainedEncoder
from ..run_folder import CONFIG, FINETUNE_BEST, FINETUNE_LATEST
from .lowshot import add_low_shot_arguments, low_shot_from_args
from .output import report_warnings

EXAMPLES = """examples:
  openjepa finetune --init runs/digits                       # the digits recipe, a few minutes on a CPU
  openjepa finetune --init runs/fashion_mnist -c fashion_mnist optim.epochs=10
  openjepa finetune --init runs/fashion_mnist --label-fraction 0.01 --draws 3   # the paper's 1 % labels
  openjepa finetune --init path/to/ijepa_vith14_1k --data /data/flowers -c my_recipe.yaml
  openjepa finetune --resume runs/digits-finetune            # continue a stopped run exactly
  torchrun --nproc_per_node 2 -m openjepa finetune --init runs/fashion_mnist -c fashion_mnist

--init takes an openjepa run folder or checkpoint, a released I-JEPA .pth.tar, a fine-tuned classifier (its run
folder or checkpoint) or an openjepa / Hugging Face / timm model folder; without it the encoder of the `model`
section starts from random initialisation. --resume takes a fine-tuning run folder or its checkpoint. Without -c,
the recipe named after the dataset the encoder was pretrained on is used when there is one (else the defaults;
without --init, the digits recipe), with that dataset. The model is chosen on held-out training images; the test
split is scored once at the end (RUN_DIR/final.json). See docs/downstream.md.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained encoder with a classification head on labelled images",
        description="Fine-tune an encoder end to end with a linear head on its average-pooled output.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=None,
                   help=f"fine-tuning recipe ({', '.join(finetune_recipe_names())}) or YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=5e-4")
    p.add_argument("--init", default=None, metavar="SOURCE",
                   help="the pretrained encoder (finetune.init); default: random initialisation")
    p.add_argument("--which", choices=("target", "context"), default=None,
                   help="encoder of an I-JEPA checkpoint: target (EMA, default) or context")
    p.add_argument("--data", default=None, metavar="NAME_OR_FOLDER",
                   help="a dataset name or a folder with one sub-folder per class (data.dataset / data.path)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue a run: its folder or checkpoint, or nothing for the config's train.out_dir")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a folder that already holds a run")
    add_low_shot_arguments(p)
    p.set_defaults(func=run)


def _resume_file(args, values: dict) -> Path | None:
    if args.resume is None:
        return None
    if args.resume is True:
        path = Path(values.get("train", {}).get("out_dir") or FinetuneConfig().train.out_dir)
    else:
        path = Path(args.resume)
    path = path / FINETUNE_LATEST if path.is_dir() or not path.suffix else path
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    return path


def _data_values(args, pretrained: PretrainedEncoder | None, recipe_given: bool) -> dict:
    """The data settings that come from the command line, or (without -c) from the pretraining run."""
    if args.data is not None:
        if Path(args.data).is_dir():
            return {"dataset": "folder", "path": args.data}
        return {"dataset": args.data}
    if not recipe_given and pretrained is not None and pretrained.data and pretrained.data.get("dataset"):
        return {"dataset": pretrained.data["dataset"], "path": pretrained.data.get("path")}
    return {}


def build_config(args) -> tuple[FinetuneConfig, PretrainedEncoder | None, Path | None]:
    """The run's config (recipe, then the pretraining run's data, then overrides and flags), the pretrained
    encoder, and the checkpoint to resume from.

    The recipe is ``-c``; resuming a run folder, the run's own ``config.yaml`` (and the run goes on in that
    folder); else the recipe named after the
    dataset the encoder was pretrained on (with that dataset) when there is one, the defaults when there is not,
    and the digits recipe without an encoder."""
    if args.resume is not None and args.config is None:
        folder = Path(args.resume) if isinstance(args.resume, str) else None
        folder = folder if folder is None or folder.is_dir() else folder.parent
        if folder is not None and (folder / CONFIG).is_file():
            args.config = str(folder / CONFIG)  # the run's own settings
    values = load_finetune_values(args.config) if args.config or args.resume is True else {}
    init = args.init or (values.get("finetune") or {}).get("init")
    resume = _resume_file(args, apply_overrides(dict(values), list(args.overrides)))
    pretrained = None
    if init is not None and resume is None:
        pretrained = report_warnings("finetune", lambda: load_pretrained(init, args.which or "target"))
    if args.config is None and resume is None:
        dataset = (pretrained.data or {}).get("dataset") if pretrained is not None else None
        if pretrained is None or dataset in finetune_recipe_names():
            values = load_finetune_values(dataset if pretrained is not None else None)
    values.setdefault("data", {}).update(_data_values(args, pretrained, args.config is not None))
    values.setdefault("finetune", {})
    if init is not None:
        values["finetune"]["init"] = str(init)
    if args.which is not None:
        values["finetune"]["which"] = args.which
    if resume is not None:  # a run continues in its own folder, wherever it was moved to
        values.setdefault("train", {})["out_dir"] = str(resume.parent)
    return finetune_config_from_dict(apply_overrides(values, list(args.overrides))), pretrained, resume


def _report(result: FinetuneResult) -> int:
    if result.stop_reason == "interrupted":
        print(f"stopped at step {result.position.global_step}; checkpoint saved in {result.run_dir}. Resume with: "
              f"openjepa finetune --resume {result.run_dir}")
        return 128 + (result.signal or signal.SIGINT)
    if result.stop_reason in ("time_limit", "max_steps"):
        print(f"stopped at step {result.position.global_step} ({result.stop_reason.replace('_', ' ')}); checkpoint "
              f"saved in {result.run_dir}. To go on: openjepa finetune --resume {result.run_dir} "
              f"train.max_steps=null train.max_minutes=null")
        return 0
    print(result.line)
    print(f"classifier: {result.run_dir / FINETUNE_BEST} (openjepa predict / openjepa export)")
    return 0


def run(args) -> int:
    spec = low_shot_from_args(args, 0)  # wrong flags fail before anything is loaded
    cfg, pretrained, resume = build_config(args)
    if spec is not None:
        spec = low_shot_from_args(args, cfg.finetune.draw_seed)
        if spec.draws > 1:
            if resume is not None:
                raise UserError("--draws runs one fine-tuning per draw in RUN_DIR/draw-K; run the same command "
                                "again (without --resume) to continue unfinished draws")
            try:
                summary = finetune_draws(cfg, pretrained, spec, args.overwrite)
            except StoppedDraw as stopped:
                return _report(stopped.result)
            print(summary.line())
            print(f"draws in {cfg.train.out_dir}/draw-*, summary in {cfg.train.out_dir}/low_shot.json")
            return 0
        cfg = with_low_shot(cfg, spec)
    return _report(finetune(cfg, pretrained, resume=resume, overwrite=args.overwrite))
