"""Images per second of the pretraining data pipeline (views + masks, no model), printed as JSON.

    python benchmarks/data_throughput.py                        # Fashion-MNIST (Debian package), 28 px
    python benchmarks/data_throughput.py --img-size 32 --workers 0 1 2
    python benchmarks/data_throughput.py --dataset folder --path DIR --img-size 224 --patch 16
    python benchmarks/data_throughput.py --train-recipe fashion_mnist --batches 10 --workers 0 1
    python benchmarks/data_throughput.py --compare-shards DIR --img-size 28 --patch 4 --workers 0 1

``--compare-shards DIR`` measures the folder ``DIR`` as ``data.dataset=folder`` and the same images as tar shards
(written once with ``openjepa make-shards`` to ``--shards-dir``, default ``DIR.shards``), interleaved, each
setting ``--repeats`` times (best kept); the result also goes to benchmarks/results/data_throughput_shards.json.
benchmarks/make_image_folder.py writes such a folder from Fashion-MNIST.

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
        overrides = [f"data.num_workers={workers}", f"data.batch_size={args.batch}"]
        if args.dataset != "fashion_mnist" or args.path:
            overrides += [f"data.dataset={args.dataset}"] + ([f"data.path={args.path}"] if args.path else [])
        cfg = load_config(args.train_recipe, overrides)
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
    parser.add_argument("--compare-shards", metavar="DIR", default=None,
                        help="compare the image folder DIR with tar shards of the same images")
    parser.add_argument("--shards-dir", default=None, help="where the shards of --compare-shards are (written if "
                                                           "absent; default DIR.shards)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard when writing them")
    parser.add_argument("--repeats", type=int, default=3, help="--compare-shards: runs per setting (best kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_shards:
        compare_shards(args)
        return
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


def compare_shards(args: argparse.Namespace) -> None:
    """Folder vs shards of the same images: images/s per worker count, interleaved, best of ``--repeats``."""
    from pathlib import Path

    from _report import machine_info, publish

    from openjepa.data.shard_writer import write_shards

    folder = Path(args.compare_shards)
    shards = Path(args.shards_dir) if args.shards_dir else folder.with_name(folder.name + ".shards")
    if not list(shards.glob("train-*.tar")):
        start = time.perf_counter()
        write_shards(folder, shards, shard_size=args.shard_size)
        print(f"wrote shards to {shards} in {time.perf_counter() - start:.1f} s", flush=True)
    kinds = {"folder": str(folder), "shards": str(shards)}
    best: dict[tuple[str, int], dict] = {}
    for _ in range(args.repeats):
        for workers in args.workers:
            for kind, path in kinds.items():
                args.dataset, args.path = kind, path
                result = measure(args, workers)
                key = (kind, workers)
                if key not in best or result["images_per_s"] > best[key]["images_per_s"]:
                    best[key] = result
    images = len(build_source(DataConfig(dataset="folder", path=str(folder)), "train"))
    publish({
        "benchmark": "data_throughput_shards", "folder": str(folder), "shards": str(shards), "images": images,
        "shard_files": len(list(shards.glob("train-*.tar"))), "train_recipe": args.train_recipe,
        "img_size": args.img_size, "in_chans": args.chans, "batch": args.batch, "repeats": args.repeats,
        "results": [{"dataset": kind, **best[(kind, w)]} for w in args.workers for kind in kinds],
        "machine": machine_info(),
    }, Path(__file__).parent / "results" / "data_throughput_shards.json")


if __name__ == "__main__":
    main()
