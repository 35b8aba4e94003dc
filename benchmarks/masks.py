"""Benchmark of multi-block mask sampling: openjepa's collator against the official ``MaskCollator``.

Both collators get the same ``batch`` of placeholder samples (a one-element image and a label), so that what is
timed is the drawing of the masks (plus the trivial stacking both do). Rounds alternate between the two and the
median time per batch is reported, with batches/s and the ratio. The paper's mask settings are used on every
grid (4 targets of scale 0.15-0.2 and aspect 0.75-1.5, one context block of scale 0.85-1); ``min_keep`` is 10
except on grids of 8x8 patches and smaller, where 4 is used for both (the official sampler retries forever when a
target block holds ``min_keep`` patches or fewer, which 10 allows on an 8x8 grid).

Example::

    python benchmarks/masks.py --official ../ijepa
    python benchmarks/masks.py --grids 14 16 8 --batch 128 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openjepa import MaskCollator, MaskConfig, MultiBlockMaskSampler  # noqa: E402

PAPER = {"target_scale": (0.15, 0.2), "target_aspect_ratio": (0.75, 1.5), "context_scale": (0.85, 1.0)}


def min_keep_for(grid: int) -> int:
    return 10 if grid > 8 else 4


def time_calls(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def ours_collator(grid: int) -> MaskCollator:
    cfg = MaskConfig(num_targets=4, min_keep=min_keep_for(grid), **PAPER)
    return MaskCollator(MultiBlockMaskSampler(grid, cfg), seed=0)


def official_collator(mods, grid: int, patch: int = 16):
    return mods.multiblock.MaskCollator(
        input_size=(grid * patch, grid * patch), patch_size=patch, enc_mask_scale=PAPER["context_scale"],
        pred_mask_scale=PAPER["target_scale"], aspect_ratio=PAPER["target_aspect_ratio"], nenc=1, npred=4,
        min_keep=min_keep_for(grid), allow_overlap=False,
    )


def bench_grid(grid: int, batch: int, rounds: int, mods) -> dict:
    samples = [(torch.zeros(1), i % 10) for i in range(batch)]
    ours = ours_collator(grid)
    official = official_collator(mods, grid) if mods is not None else None
    ours_calls = max(1, rounds * 10)  # ours is fast: more calls per round keep the timer resolution honest
    t_ours, t_off = [], []
    for _ in range(2):  # warm-up
        ours(samples)
        if official is not None:
            official(samples)
    for _ in range(rounds):
        t_ours += time_calls(lambda: ours(samples), ours_calls // rounds)
        if official is not None:
            t_off += time_calls(lambda: official(samples), 1)
    g = torch.Generator().manual_seed(0)
    t_sampler = time_calls(lambda: ours.sampler.sample(batch, g), ours_calls)
    result = {
        "grid": [grid, grid],
        "batch": batch,
        "min_keep": min_keep_for(grid),
        "ours_ms_median": 1e3 * statistics.median(t_ours),
        "ours_batches_per_s": 1 / statistics.median(t_ours),
        "ours_sampler_only_ms_median": 1e3 * statistics.median(t_sampler),
    }
    if official is not None:
        result["official_ms_median"] = 1e3 * statistics.median(t_off)
        result["official_batches_per_s"] = 1 / statistics.median(t_off)
        result["speedup"] = statistics.median(t_off) / statistics.median(t_ours)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=[14, 16, 8], help="square patch-grid sides")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds (one official call each)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--official", default=None, help="path of a facebookresearch/ijepa checkout to compare with")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mods = None
    if args.official:
        from _official import import_official

        mods = import_official(args.official)
    results = [bench_grid(grid, args.batch, args.rounds, mods) for grid in args.grids]
    out = {"benchmark": "mask_sampler", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "results": results}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    from _official import OfficialCheckoutError

    try:
        main()
    except OfficialCheckoutError as exc:
        sys.exit(f"error: {exc}")
