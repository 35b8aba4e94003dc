"""Images per second of the pretraining data pipeline (views + masks, no model), printed as JSON.

    python benchmarks/data_throughput.py                        # Fashion-MNIST (Debian package), 28 px
    python benchmarks/data_throughput.py --img-size 32 --workers 0 1 2
    python benchmarks/data_throughput.py --dataset folder --path DIR --img-size 224 --patch 16
    python benchmarks/data_throughput.py --train-recipe fashion_mnist --batches 10 --workers 0 1

Each setting runs ``--batches`` batches after one warm-up batch (which pays for worker start-up). The data side
should be much faster than the model (benchmarks/step.py). ``--train-recipe NAME`` also runs a training step of
that recipe's model on every batch, which is how ``data.num_workers`` should be judged: a worker process
competes with the training step for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from openjepa.config import load_config
from openjepa.data import DataConfig, build_pretrain_loader, build_source
from openjepa.ijepa import ModelConfig, build_ijepa
from openjepa.masks import MaskConfig
from openjepa.step import make_optimizer, train_step


def _settings(args: argparse.Namespace, workers: int):
    if args.train_recipe:
        cfg = load_config(args.train_recipe, [f"data.num_workers={workers}", f"data.batch_size={args.batch}"])
        return cfg.data, cfg.model, cfg.mask
    data_cfg = DataConfig(dataset=args.dataset, path=args.path, batch_size=args.batch, num_workers=workers)
    model_cfg = ModelConfig(arch="vit_tiny", img_size=args.img_size, patch_size=args.patch, in_chans=args.chans)
    return data_cfg, model_cfg, MaskConfig()


def measure(args: argparse.Namespace, workers: int) -> dict:
    data_cfg, model_cfg, mask_cfg = _settings(args, workers)
    data = build_pretrain_loader(data_cfg, model_cfg, mask_cfg, seed=0)
    step = None
    if args.train_recipe:
        model = build_ijepa(model_cfg)
        optimizer = make_optimizer(model)

        def step(batch):
            train_step(model, optimizer, batch.images, batch.context, batch.targets, 1e-4, 0.04, 0.996)
    data.set_epoch(0)
    batches = iter(data.loader)
    first = next(batches)  # warm-up: worker start-up, first-touch costs
    if step:
        step(first)
    count = min(args.batches, data.steps_per_epoch - 1)
    start = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
        if step:
            step(batch)
    seconds = time.perf_counter() - start
    del batches
    return {"workers": workers, "batches": count, "images_per_s": round(count * args.batch / seconds, 1),
            "ms_per_batch": round(1e3 * seconds / count, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--path", default=None)
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--chans", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    parser.add_argument("--train-recipe", default=None, help="also train this recipe's model on every batch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    source = build_source(_settings(args, 0)[0], "train")
    load_s = time.perf_counter() - start
    results = [measure(args, w) for w in args.workers]
    print(json.dumps({
        "dataset": source.name, "train_recipe": args.train_recipe, "train_images": len(source),
        "load_s": round(load_s, 3),
        "img_size": args.img_size, "in_chans": args.chans, "batch": args.batch, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
