"""The flags and inputs of the commands that read a trained encoder (``openjepa embed``, ``eval``, ``viz``): which
checkpoint or run folder, which encoder, the settings to read data with, and the features of a split."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from ..config import ConfigError, RunConfig, apply_overrides, from_dict, load_config, recipe_names
from ..data.loader import build_eval_dataset
from ..errors import UserError
from ..eval.features import Features, extract_features, resolve_device
from ..ijepa import ModelConfig
from ..models.vit import VisionTransformer
from ..pretrained import LoadedEncoder, read_encoder
from .data_args import add_data_arguments, data_config_from_args

CHECKPOINT_HELP = "checkpoint file (openjepa's or a released I-JEPA one) or run folder (its latest checkpoint)"


def add_encoder_arguments(p: argparse.ArgumentParser, split: str | None, required: bool = True) -> None:
    """--checkpoint, -c / overrides, the data flags, --which, --pool and the runtime flags."""
    p.add_argument("--checkpoint", required=required, help=CHECKPOINT_HELP)
    p.add_argument("-c", "--config", default=None,
                   help=f"recipe name ({', '.join(recipe_names())}) or YAML file whose data settings replace the "
                        f"run's (needed for released checkpoints, which record none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.path=/data/fmnist")
    add_data_arguments(p, split=split)
    p.add_argument("--which", choices=("target", "context"), default="target",
                   help="the EMA target encoder (default; what the paper evaluates) or the context encoder")
    p.add_argument("--pool", choices=("mean", "concat4"), default=None,
                   help="mean: average of the last layer's patch tokens; concat4: the last 4 blocks' averages "
                        "concatenated (default: the run's eval.pool, else mean)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: eval.batch_size)")
    p.add_argument("--device", default="auto", help="auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0: the main process)")


def run_config(args: argparse.Namespace, recorded: dict | None) -> RunConfig:
    """The run's recorded config (defaults for a released checkpoint), with the data and eval sections of ``-c``
    when given, then the dotted overrides, then ``--data`` / ``--data-path``."""
    if recorded is None and args.config is None and getattr(args, "data", None) is None:
        raise UserError("this checkpoint records no run config (a released I-JEPA file?), so the data it should be "
                        "evaluated on is unknown: pass --data NAME_OR_FOLDER (with --data-path for a named "
                        "dataset) or -c RECIPE_OR_YAML")
    values = dict(recorded or {})
    if args.config is not None:
        chosen = load_config(args.config).to_dict()
        values.update(data=chosen["data"], eval=chosen["eval"])
    if args.overrides:
        values = apply_overrides(values, args.overrides)
    try:
        cfg = from_dict(values)
    except ConfigError as exc:
        source = "the overrides or the config recorded in the checkpoint" if recorded else "the overrides"
        raise ConfigError(f"{exc} (from {source})") from exc
    return dataclasses.replace(cfg, data=data_config_from_args(args, cfg.data))


def encoder_model_config(cfg: RunConfig, encoder: VisionTransformer) -> ModelConfig:
    """The model section matching the loaded encoder's input geometry (what the eval transform needs)."""
    return dataclasses.replace(cfg.model, img_size=encoder.patch_embed.img_size[0], patch_size=encoder.patch_size,
                               in_chans=encoder.in_chans)


def features_for_split(args: argparse.Namespace, loaded: LoadedEncoder, cfg: RunConfig, split: str,
                       device: torch.device) -> Features:
    """Features of one split through the loaded encoder, with their provenance in ``meta``."""
    dataset = build_eval_dataset(cfg.data, encoder_model_config(cfg, loaded.encoder), split)
    if len(dataset) == 0:
        raise UserError(f"the {split} split of {cfg.data.dataset} is empty")
    pool = args.pool or cfg.eval.pool
    batch_size = args.batch_size or cfg.eval.batch_size
    if batch_size < 1 or args.workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    features = extract_features(loaded.encoder, dataset, pool, batch_size, device, progress=True,
                                num_workers=args.workers, desc=f"{split} features")
    features.meta.update(checkpoint=str(loaded.path), which=loaded.which, epoch=loaded.epoch, step=loaded.step,
                         dataset=cfg.data.dataset, data_path=cfg.data.path, split=split)
    return features


def load_for_args(args: argparse.Namespace) -> tuple[LoadedEncoder, RunConfig, torch.device]:
    """The encoder named by ``--checkpoint`` (a file or a run folder) / ``--which``, its run config and the device
    to use."""
    loaded = read_encoder(args.checkpoint, args.which)
    device = resolve_device(args.device)
    loaded.encoder.to(device)
    return loaded, run_config(args, loaded.run_config), device
