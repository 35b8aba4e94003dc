"""``openjepa pretrain``: I-JEPA pretraining from a recipe plus dotted overrides."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from ..config import load_config, recipe_names
from ..errors import UserError
from ..run_folder import LATEST, config_beside
from ..train import pretrain

EXAMPLES = """examples:
  openjepa pretrain                                   # the embedded digits recipe, a few minutes on a CPU
  openjepa pretrain -c fashion_mnist                  # a shipped recipe by name (see configs/)
  openjepa pretrain -c configs/in1k_vith14_ep300.yaml data.path=/data/in1k optim.lr=5e-4
  openjepa pretrain --resume runs/digits              # continue a stopped run exactly where it stopped
  torchrun --nproc_per_node 2 -m openjepa pretrain -c fashion_mnist
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain an encoder with I-JEPA",
        description="Pretrain a ViT with I-JEPA. Without -c, trains the embedded digits recipe.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", help=f"recipe name ({', '.join(recipe_names())}) or YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=5e-4")
    p.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="continue a run: a run folder, a checkpoint file (openjepa's or a released I-JEPA one), or nothing "
        "for the config's train.out_dir",
    )
    p.add_argument(
        "--auto-resume", action="store_true",
        help="resume from train.out_dir when it holds a checkpoint, else start a new run (for requeued cluster jobs)",
    )
    p.add_argument("--overwrite", action="store_true", help="start afresh in a folder that already holds a run")
    p.set_defaults(func=run)


def _resume_target(args) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from, and the config to use when the user gave none (the run's own)."""
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume key=value`: a bare --resume followed by an override
        args.resume = True
    if args.resume is None and args.auto_resume:
        latest = Path(load_config(args.config, args.overrides).train.out_dir) / LATEST
        return (latest if latest.exists() else None), args.config
    if args.resume is None:
        return None, args.config
    if args.resume is True:
        config = load_config(args.config, args.overrides)
        return Path(config.train.out_dir) / LATEST, args.config
    path = Path(args.resume)
    if path.is_dir():
        path = path / LATEST
    if not path.exists():
        raise UserError(f"nothing to resume: {path} does not exist")
    run_config = config_beside(path)
    if args.config is None and run_config is not None:
        return path, str(run_config)
    return path, args.config


def run(args) -> int:
    resume, config_source = _resume_target(args)
    config = load_config(config_source, args.overrides)
    if resume is not None and not resume.exists():
        raise UserError(f"nothing to resume in {config.train.out_dir}: {resume.name} does not exist")
    result = pretrain(config, resume=resume, overwrite=args.overwrite)
    if result.stop_reason == "interrupted":
        if result.saved_step == result.position.global_step:
            print(f"stopped at step {result.position.global_step}; checkpoint saved in {result.run_dir}. "
                  f"Resume with: openjepa pretrain --resume {result.run_dir}")
        else:  # the last save did not finish within train.stop_grace_seconds
            kept = f"continues from step {result.saved_step}" if result.saved_step is not None else "starts again"
            print(f"stopped at step {result.position.global_step} without its checkpoint; "
                  f"`openjepa pretrain --resume {result.run_dir}` {kept}")
        return 128 + (result.signal or signal.SIGINT)
    if result.stop_reason == "time_limit":
        print(f"stopped at step {result.position.global_step} (time limit); checkpoint saved in {result.run_dir}")
    if result.stop_reason == "max_steps":
        # --resume RUN_DIR reads the run's config.yaml, which keeps this limit: say how to lift it
        print(f"stopped at step {result.position.global_step} (max steps); checkpoint saved in {result.run_dir}. "
              f"To go on: openjepa pretrain --resume {result.run_dir} train.max_steps=null")
    if result.final_line:
        print(result.final_line)
    return 0
