"""Save and load time and peak host memory of a full I-JEPA training checkpoint (default: the released ViT-H/14).

    python benchmarks/checkpoint_io.py                                   # ViT-H/14 (in1k_vith14_ep300), ~10 GB
    python benchmarks/checkpoint_io.py --recipe in22k_vitg16_ep44        # ViT-g/16
    python benchmarks/checkpoint_io.py --arch vit_large --patch 16       # what fits on a small machine
    python benchmarks/checkpoint_io.py --arch vit_tiny --patch 16 --pred-depth 2   # smoke test, seconds

The state is what the trainer saves: context encoder, target encoder, predictor (``module.`` keys), AdamW with both
moments for every trained parameter, and the bookkeeping. It is built on the meta device and materialised with
``to_empty`` plus one ``fill_`` per tensor (every page touched, no random initialisation cost). Each scenario runs
in a fresh subprocess, so that its peak memory (``VmHWM`` of /proc/self/status) is its own:

* ``save_sync``: :func:`openjepa.checkpoint.save_checkpoint` (temporary file, fsync, rename);
* ``save_background``: :class:`openjepa.checkpoint_writer.CheckpointWriter` with a snapshot of every tensor
  (training could go on): ``blocked_s`` is the time the caller waits (the snapshot), ``total_s`` until the file
  is in place; ``main_thread_speed`` is how fast a pure-Python loop ran on the main thread during the write,
  relative to before it (1.0: the write does not hold the GIL);
* ``save_background_kept``: two background saves with ``keep_buffers=True``; the second one's numbers (its
  snapshot overwrites the first one's host memory instead of allocating it: periodic saves during training);
* ``save_background_nocopy``: the same with ``copy_cpu=False`` (training has stopped: no second copy);
* ``load``: :func:`openjepa.checkpoint.load_checkpoint` (``torch.load(weights_only=True)``);
* ``load_mmap``: :func:`openjepa.checkpoint_writer.load_checkpoint_mmap`: ``open_s`` to get the dict,
  ``read_s`` to touch every tensor once; ``rss_anon_gb``/``rss_file_gb`` at the end split private memory from
  page-cache pages of the mapped file (shared by every process of the machine).

Before the loads, the file's pages are dropped from the page cache (``posix_fadvise(DONTNEED)``), so loads read
from the disk (``--warm`` keeps them cached). A scenario that needs more memory than ``MemAvailable`` (or files
more than the free disk) is skipped and the output says so and why. Results: benchmarks/results/checkpoint_io.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9
SCENARIOS = ("save_sync", "save_background", "save_background_kept", "save_background_nocopy", "load", "load_mmap")
# Host memory each scenario needs, in states: the state itself, plus a snapshot for a copying background save.
MEMORY_FACTOR = {"save_sync": 1.05, "save_background": 2.05, "save_background_kept": 2.05,
                 "save_background_nocopy": 1.05, "load": 1.05,
                 "load_mmap": 0.1}


def proc_status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in GB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024 / GB
    return out


def mem_available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    return float("nan")


def model_config(args):
    from openjepa.config import load_config

    cfg = load_config(args.recipe).model
    for key in ("arch", "patch_size", "img_size", "pred_depth", "pred_emb_dim"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def build_state(args) -> dict:
    """The trainer's checkpoint dict for the configured model, with every tensor materialised and filled."""
    import torch

    from openjepa.config import load_config
    from openjepa.ijepa import build_ijepa
    from openjepa.step import make_optimizer
    from openjepa.train.checkpoints import Position, training_state

    cfg = load_config(args.recipe)
    cfg.model = model_config(args)
    with torch.device("meta"):
        model = build_ijepa(cfg.model)
    model = model.to_empty(device="cpu")
    optimizer = make_optimizer(model, fused=False)
    with torch.no_grad():
        for i, tensor in enumerate([*model.parameters(), *model.buffers()]):
            tensor.fill_(1e-3 * (i % 97))
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p] = {"step": torch.tensor(1000.0), "exp_avg": torch.full_like(p, 1e-4),
                                      "exp_avg_sq": torch.full_like(p, 1e-8)}
    return training_state(model, optimizer, None, Position(10, 0, 12510), 0.5, cfg.data.batch_size, 16,
                          cfg.to_dict(), {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def state_bytes(args) -> tuple[int, int]:
    """(parameters of the three networks, bytes of the checkpoint's tensors), counted on the meta device."""
    import torch

    from openjepa.ijepa import build_ijepa

    with torch.device("meta"):
        model = build_ijepa(model_config(args))
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    return params, 4 * (params + buffers + 2 * trained)


def python_rate(seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sum(range(1000))
        count += 1
    return count / (time.perf_counter() - start)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_scenario(args) -> dict:
    """One scenario in this (fresh) process; returns its measurements."""
    import torch

    from openjepa.checkpoint import load_checkpoint, save_checkpoint
    from openjepa.checkpoint_writer import CheckpointWriter, load_checkpoint_mmap

    torch.set_num_threads(args.threads)
    path = Path(args.file)
    result: dict = {"rss_baseline_gb": proc_status()["VmRSS"]}  # the interpreter with torch imported
    if args.scenario.startswith("save"):
        start = time.perf_counter()
        state = build_state(args)
        result["build_s"] = time.perf_counter() - start
        result["rss_after_build_gb"] = proc_status()["VmRSS"]
        if args.scenario == "save_sync":
            start = time.perf_counter()
            save_checkpoint(state, path)
            result["blocked_s"] = result["total_s"] = time.perf_counter() - start
        else:
            before = python_rate(0.5)
            writer = CheckpointWriter(keep_buffers=args.scenario == "save_background_kept")
            if args.scenario == "save_background_kept":
                writer.save(state, path)
                writer.wait()
            start = time.perf_counter()
            writer.save(state, path, copy_cpu=args.scenario != "save_background_nocopy")
            result["blocked_s"] = time.perf_counter() - start
            rates = []
            while writer.busy:
                rates.append(python_rate(0.2))
            writer.wait()
            result["total_s"] = time.perf_counter() - start
            result["main_thread_speed"] = (sum(rates) / len(rates) / before) if rates else None
        result["file_gb"] = path.stat().st_size / GB
        result["write_gb_per_s"] = result["file_gb"] / result["total_s"]
    elif args.scenario == "load":
        start = time.perf_counter()
        state = load_checkpoint(path)
        result["load_s"] = time.perf_counter() - start
        del state
    else:
        start = time.perf_counter()
        state = load_checkpoint_mmap(path)
        result["open_s"] = time.perf_counter() - start
        start = time.perf_counter()
        total = 0.0

        def touch(value):
            nonlocal total
            if isinstance(value, torch.Tensor):
                if value.numel():
                    total += float(value.reshape(-1)[:: max(1, 4096 // value.element_size())].float().sum())
            elif isinstance(value, dict):
                for v in value.values():
                    touch(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    touch(v)

        touch(state)  # one element per 4 KiB page: every page of the file is read once
        result["read_s"] = time.perf_counter() - start
    status = proc_status()
    result.update(peak_rss_gb=status["VmHWM"], rss_anon_gb=status.get("RssAnon"), rss_file_gb=status.get("RssFile"))
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="in1k_vith14_ep300")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--patch", dest="patch_size", type=int, default=None)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--pred-depth", type=int, default=None)
    parser.add_argument("--pred-emb-dim", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where to write the checkpoint files (default: a temporary "
                                                    "folder in $TMPDIR; use the file system your runs write to)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--warm", action="store_true", help="load from the page cache (default: dropped first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "checkpoint_io.json")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: run one scenario in this process
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args)))
        return

    from _report import machine_info, publish

    params, size = state_bytes(args)
    folder = Path(tempfile.mkdtemp(prefix="openjepa-ckpt-bench-", dir=args.dir))
    file = folder / "jepa-latest.pth.tar"
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("recipe", "arch", "img_size", "pred_depth", "pred_emb_dim", "threads") and v is not None]
    forwarded += [f"--patch={args.patch_size}"] if args.patch_size else []
    results: dict[str, dict] = {}
    print(f"state: {params / 1e6:.0f}M parameters (three networks), {size / GB:.2f} GB of tensors with the AdamW "
          f"moments; MemAvailable {mem_available():.1f} GB; files in {folder}", flush=True)
    try:
        for scenario in args.scenarios:
            need = MEMORY_FACTOR[scenario] * size / GB + 0.5
            avail = mem_available()
            disk = shutil.disk_usage(folder).free / GB
            if avail < need:
                results[scenario] = {"skipped": f"needs about {need:.1f} GB of host memory, {avail:.1f} GB available"}
            elif scenario.startswith("load") and not file.exists():
                results[scenario] = {"skipped": "no checkpoint file: no save scenario ran (or all were skipped)"}
            elif scenario.startswith("save") and disk < 1.1 * size / GB:
                results[scenario] = {"skipped": f"needs {1.1 * size / GB:.1f} GB of free disk, {disk:.1f} GB free"}
            else:
                if scenario.startswith("load") and not args.warm:
                    drop_cache(file)
                first_save = scenario.startswith("save") and not file.exists()
                target = file if scenario.startswith("load") or first_save else folder / f"{scenario}.pth.tar"
                done = subprocess.run([sys.executable, __file__, "--scenario", scenario, "--file", str(target),
                                       *forwarded], capture_output=True, text=True)
                if done.returncode != 0:
                    results[scenario] = {"failed": done.stderr.strip().splitlines()[-1:]}
                else:
                    results[scenario] = json.loads(done.stdout.strip().splitlines()[-1])
                if target != file:
                    target.unlink(missing_ok=True)
            print(f"{scenario}: {results[scenario]}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cfg = model_config(args)
    publish({
        "benchmark": "checkpoint_io", "recipe": args.recipe, "arch": cfg.arch, "patch_size": cfg.patch_size,
        "img_size": cfg.img_size, "pred_depth": cfg.pred_depth, "pred_emb_dim": cfg.pred_emb_dim,
        "parameters_m": round(params / 1e6, 1), "state_gb": round(size / GB, 3),
        "page_cache": "warm" if args.warm else "dropped before each load (posix_fadvise DONTNEED)",
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1),
        "results": results, "machine": machine_info(),
    }, args.out)


if __name__ == "__main__":
    main()
