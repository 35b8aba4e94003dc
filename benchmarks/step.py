"""Benchmark of the full I-JEPA training step, optionally against the official implementation.

One step = mask sampling and collation, target forward, context forward, predictor, loss, backward, AdamW step,
EMA update. After ``--warmup`` steps, ``--repeat`` steps are timed; with ``--official PATH`` the official step runs
in the same process on the same images, alternating with ours step by step so that both see the same machine
load. Prints one JSON object and writes it under ``benchmarks/results/`` (``step_<setup>_<dtype>[_variant]_<machine>
.json``; ``--out`` elsewhere, ``--no-save`` nowhere): images/s, analytic FLOPs per step (forward + backward of
encoder, target and predictor), achieved FLOP/s, MFU against the matmul peak measured here in the precision the
step runs in, peak step memory, the ratios, the CPU model and matmul flags, and how the precision was decided.

``--dtype auto`` decides the precision as ``openjepa pretrain`` does (``openjepa.train.autoprecision``: measured on
a CPU, by compute capability on a GPU); on a CPU every dtype also gets the linear and attention kernels measured
fastest there, as in training (``OPENJEPA_CPU_PRECISION=fp32`` or ``bf16`` skips the measurement and keeps the
defaults).

The two mask samplers differ (openjepa's blocks may touch the last row and column, its context block may cover
the whole grid, and unequal contexts are subsampled rather than cut to a row-major prefix), so with their own
collators the two networks get different amounts of work: on an 8x8 grid ours keeps about 2.7x the context
patches. Hence two ratios: ``speedup_same_masks`` (the official step fed the very masks our step used, paired
step by step: identical FLOPs, only the implementations differ) and ``speedup_own_masks`` (each with its own
collator: what a user sees end to end), with ``flops_ratio_own_masks`` to tell the two apart.

Examples (docs/benchmarks.md has the configurations and results)::

    python benchmarks/step.py --setup small224 --official ../ijepa --repeat 5 --warmup 1
    python benchmarks/step.py --setup tiny32 --official ../ijepa --repeat 7 --warmup 2 --dtype auto
    python benchmarks/step.py --preset vit_base --patch 16 --img 224 --batch 8 --grad-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_tag, machine_info  # noqa: E402

from openjepa import MaskCollator, MaskConfig, MultiBlockMaskSampler, build_ijepa  # noqa: E402
from openjepa.cpu_allocator import keep_freed_memory  # noqa: E402
from openjepa.models import PRESETS, fast_linear, kernels  # noqa: E402
from openjepa.models.fast_linear import onednn_bf16_available, onednn_linear_available  # noqa: E402
from openjepa.speed_probe import probe_shapes  # noqa: E402
from openjepa.precision import PrecisionChoice, best_time  # noqa: E402
from openjepa.step import make_optimizer, train_step  # noqa: E402
from openjepa.train.autoprecision import mean_mask_lengths, resolve_precision  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

LR, WD, MOMENTUM = 1e-4, 0.04, 0.996  # any fixed values: they do not change the cost of a step


# -- analytic FLOPs --------------------------------------------------------------------------------------------------
def blocks_flops(num_seqs: int, seq_len: int, dim: int, mlp_ratio: float, depth: int) -> float:
    """Forward matmul FLOPs (2 per multiply-add) of ``depth`` transformer blocks on ``num_seqs`` sequences."""
    hidden = int(dim * mlp_ratio)
    tokens = num_seqs * seq_len
    linear = 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden)
    attention = 2 * 2 * num_seqs * seq_len * seq_len * dim  # q k^T and attn v
    return depth * (linear + attention)


def step_flops(arch: dict, batch: int, context_len: int, target_len: int, num_targets: int) -> dict:
    """Useful FLOPs of one step: target forward; encoder and predictor forward + backward (backward = 2x forward,
    except the patch embedding whose input needs no gradient: 1x)."""
    d, depth, ratio = arch["embed_dim"], arch["depth"], arch["mlp_ratio"]
    n, patch_in = arch["num_patches"], arch["patch_size"] ** 2 * arch["in_chans"]
    patch_embed = 2 * batch * n * patch_in * d
    target = patch_embed + blocks_flops(batch, n, d, ratio, depth)
    encoder_fwd = blocks_flops(batch, context_len, d, ratio, depth)
    encoder = patch_embed * 2 + encoder_fwd * 3
    dp, out = arch["pred_dim"], arch["pred_out"]
    seqs = num_targets * batch
    predictor_fwd = (
        2 * batch * context_len * d * dp
        + blocks_flops(seqs, context_len + target_len, dp, ratio, arch["pred_depth"])
        + 2 * seqs * target_len * dp * out
    )
    predictor = 3 * predictor_fwd
    return {"target": target, "encoder": encoder, "predictor": predictor, "total": target + encoder + predictor}


# -- machine ---------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(fn, a, b, device: torch.device, repeat: int) -> float:
    """Best FLOP/s of ``fn(a, b)`` for square ``a``, ``b`` (best, not median: the peak is what the hardware can
    do when nothing else is running). A first call over 5 s (emulated bf16 on a CPU without it) is the answer."""
    inner = 1 if device.type == "cpu" else 20

    def run() -> None:
        for _ in range(inner):
            fn(a, b)
        synchronize(device)

    return 2 * a.shape[0] ** 3 * inner / best_time(run, min_time=0.0, min_reps=repeat, max_reps=repeat,
                                                    give_up_after=5.0)


def matmul_peaks(device: torch.device, dtype: torch.dtype, size: int, repeat: int = 7) -> dict[str, float]:
    """FLOP/s of ``size x size`` matmuls in the step's precision by every kernel the step may use: ``torch.mm``
    (MKL, or oneDNN for bf16, on CPU; cuBLAS on GPU) and, on CPU, openjepa's oneDNN linear path where it works in
    that dtype (MKL's fp32 is far slower than oneDNN on AMD CPUs)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    peaks = {"torch.mm": matmul_rate(torch.mm, a, b, device, repeat)}
    onednn = (dtype == torch.float32 and onednn_linear_available()) or (
        dtype == torch.bfloat16 and onednn_bf16_available())
    if device.type == "cpu" and onednn:
        with kernels.using_kernels(linear={kernels.DTYPE_NAMES[dtype]: "onednn"}):
            peaks["onednn"] = matmul_rate(lambda x, y: fast_linear.linear(x, y), a, b, device, repeat)
    return peaks


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM`` on Linux, ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


# -- the two implementations -----------------------------------------------------------------------------------------
@dataclass
class Timings:
    steps: list[float] = field(default_factory=list)
    masks: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    context_len: list[int] = field(default_factory=list)
    target_len: list[int] = field(default_factory=list)
    warmup: list[float] = field(default_factory=list)


class Ours:
    def __init__(self, args, device, autocast_dtype):
        self.model = build_ijepa(
            arch=args.preset, patch_size=args.patch, img_size=args.img, depth=args.depth,
            pred_depth=args.pred_depth, pred_emb_dim=args.pred_dim,
        ).to(device)
        if args.grad_checkpointing:
            self.model.encoder.set_grad_checkpointing(True)
            self.model.predictor.set_grad_checkpointing(True)
        self.model.set_selective_recompute(args.selective_recompute)
        self.model.train()
        self.optimizer = make_optimizer(self.model)
        self.runner = torch.compile(self.model, dynamic=True) if args.compile else self.model
        sampler = MultiBlockMaskSampler(self.model.encoder.grid_size, MaskConfig(min_keep=args.min_keep))
        self.collator = MaskCollator(sampler, seed=args.seed)
        self.device, self.autocast_dtype = device, autocast_dtype
        self.last_masks = None

    def step(self, samples) -> tuple[float, float, tuple[int, int]]:
        """Time (s) of the whole step, of mask sampling + collation alone, and the (context, target) lengths."""
        synchronize(self.device)
        t0 = time.perf_counter()
        batch = self.collator(samples)
        t_masks = time.perf_counter() - t0
        images = batch.images.to(self.device, non_blocking=True)
        ctx = batch.context.to(self.device, non_blocking=True)
        tgt = batch.targets.to(self.device, non_blocking=True)
        train_step(self.runner, self.optimizer, images, ctx, tgt, LR, WD, MOMENTUM, autocast_dtype=self.autocast_dtype)
        synchronize(self.device)
        self.last_masks = (batch.context, batch.targets)
        return time.perf_counter() - t0, t_masks, (ctx.shape[1], tgt.shape[2])


class Official:
    def __init__(self, args, device, autocast_dtype):
        from _official import build_official, import_official

        mods = import_official(args.official)
        mask_kwargs = {"enc_mask_scale": (0.85, 1.0), "pred_mask_scale": (0.15, 0.2), "aspect_ratio": (0.75, 1.5),
                       "nenc": 1, "npred": 4, "min_keep": args.min_keep, "allow_overlap": False}
        preset_depth = PRESETS[args.preset].depth
        depth = args.depth if args.depth not in (None, preset_depth) else None
        self.setup = build_official(mods, args.preset, args.patch, args.img, args.pred_depth, args.pred_dim,
                                    mask_kwargs, device, depth=depth)
        self.device, self.autocast_dtype = device, autocast_dtype

    def step(self, samples, masks=None) -> tuple[float, float, tuple[int, int]]:
        """As :meth:`Ours.step`; with ``masks`` (ours: context [B,Kc], targets [M,B,Kt]) the official step runs on
        those masks and the official collator only stacks the images."""
        from _official import official_collate, official_step

        synchronize(self.device)
        t0 = time.perf_counter()
        if masks is None:
            (imgs, _), masks_enc, masks_pred = official_collate(self.setup, samples)
        else:
            imgs = torch.utils.data.default_collate([s[0] for s in samples])
            masks_enc, masks_pred = [masks[0]], list(masks[1].unbind(0))
        t_masks = time.perf_counter() - t0
        imgs = imgs.to(self.device, non_blocking=True)
        masks_enc = [m.to(self.device, non_blocking=True) for m in masks_enc]
        masks_pred = [m.to(self.device, non_blocking=True) for m in masks_pred]
        official_step(self.setup, imgs, masks_enc, masks_pred, LR, WD, MOMENTUM, self.autocast_dtype)
        synchronize(self.device)
        return time.perf_counter() - t0, t_masks, (masks_enc[0].shape[1], masks_pred[0].shape[1])


# -- measurement -----------------------------------------------------------------------------------------------------
def make_samples(args) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(args.seed)
    return [(torch.randn(3, args.img, args.img, generator=g), i % 10) for i in range(args.batch)]


def record(t: Timings, result, arch: dict, batch: int, warm: bool) -> None:
    seconds, mask_s, (kc, kt) = result
    if warm:
        t.warmup.append(seconds)
        return
    t.steps.append(seconds)
    t.masks.append(mask_s)
    t.context_len.append(kc)
    t.target_len.append(kt)
    t.flops.append(step_flops(arch, batch, kc, kt, 4)["total"])


def summarise(t: Timings, arch: dict, batch: int, peaks: dict[str, float]) -> dict:
    median = statistics.median(t.steps)
    rates = sorted(f / s for f, s in zip(t.flops, t.steps))
    achieved = statistics.median(rates)
    kc, kt = statistics.mean(t.context_len), statistics.mean(t.target_len)
    return {
        "step_s_median": median,
        "step_s_min": min(t.steps),
        "step_s": [round(s, 5) for s in t.steps],
        "warmup_s": [round(s, 5) for s in t.warmup],
        "images_per_s": batch / median,
        "mask_ms_median": 1e3 * statistics.median(t.masks),
        "mask_fraction_of_step": statistics.median(t.masks) / median,
        "context_len_mean": kc,
        "target_len_mean": kt,
        "flops_per_step_at_mean_lengths": step_flops(arch, batch, round(kc), round(kt), 4),
        "flops_per_step_median": statistics.median(t.flops),
        "achieved_flops_per_s": achieved,
        "mfu": achieved / max(peaks.values()),
        "mfu_by_kernel_peak": {k: achieved / v for k, v in peaks.items()},
    }


def arch_of(ours: Ours) -> dict:
    enc, pred = ours.model.encoder, ours.model.predictor
    return {"embed_dim": enc.embed_dim, "depth": enc.depth, "mlp_ratio": enc.mlp_ratio, "num_patches":
            enc.patch_embed.num_patches, "patch_size": enc.patch_size, "in_chans": enc.in_chans,
            "pred_dim": pred.predictor_embed_dim, "pred_depth": pred.depth, "pred_out": pred.out_dim}


def memory_probe(argv: list[str], which: str) -> dict:
    """Run ``warmup + 1`` steps of one implementation in a fresh process and return its peak memory."""
    cmd = [sys.executable, __file__, *argv, "--memory-probe", which]
    env = dict(os.environ)
    if env.get("OPENJEPA_CPU_PRECISION", "").strip().lower() == "remeasure":
        env["OPENJEPA_CPU_PRECISION"] = "measure"  # the parent's fresh measurement, from the cache: same kernels
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe for {which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_probe(args, device, autocast_dtype) -> dict:
    """``ours``, ``official``, or ``official_same_masks`` (the official step on masks drawn by our sampler)."""
    which = args.memory_probe
    impl = Ours(args, device, autocast_dtype) if which == "ours" else Official(
        args, device, official_dtype(args, autocast_dtype))
    samples = make_samples(args)
    sampler = MultiBlockMaskSampler(args.img // args.patch, MaskConfig(min_keep=args.min_keep))
    collator = MaskCollator(sampler, args.seed)
    rss_before = peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(max(1, args.warmup) + 1):
        if which == "official_same_masks":
            batch = collator(samples)
            impl.step(samples, (batch.context, batch.targets))
        else:
            impl.step(samples)
    result = {"peak_rss_bytes": peak_rss_bytes(), "peak_rss_before_first_step_bytes": rss_before}
    if device.type == "cuda":
        result["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def official_dtype(args, ours: torch.dtype | None) -> torch.dtype | None:
    """The official step's autocast dtype: ours unless ``--official-dtype`` names another."""
    return ours if args.official_dtype == "same" else {"fp32": None, "bf16": torch.bfloat16}[args.official_dtype]


def decide_dtype(args, device: torch.device) -> PrecisionChoice:
    """``--dtype`` resolved as ``openjepa pretrain`` resolves ``train.precision`` (see the module docstring)."""
    requested = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    shapes = None
    if device.type == "cpu":
        preset = PRESETS[args.preset]
        grid = (args.img // args.patch, args.img // args.patch)
        context_len, target_len, num_targets = mean_mask_lengths(grid, MaskConfig(min_keep=args.min_keep), args.batch)
        shapes = probe_shapes(preset.embed_dim, preset.num_heads, preset.mlp_ratio, args.pred_dim, preset.num_heads,
                              args.batch, context_len, target_len, num_targets)
    return resolve_precision(requested, device, shapes, args.threads)


def result_path(args, dtype: str, machine: dict) -> Path:
    """``benchmarks/results/step_<setup>_<dtype>[_variants]_<machine>.json`` (dtype ``auto-fp32`` etc. for
    ``--dtype auto``), or ``--out``."""
    if args.out:
        return Path(args.out)
    variants = [name for flag, name in ((args.grad_checkpointing, "gc"), (args.selective_recompute, "recompute"),
                                        (args.compile, "compile"), (not args.official, "ours")) if flag]
    if args.official and args.official_dtype != "same":
        variants.append(f"official-{args.official_dtype}")
    parts = ["step", args.setup or f"{args.preset}-p{args.patch}-{args.img}px-b{args.batch}", dtype, *variants,
             f"{cpu_tag(machine)}-{torch.get_num_threads()}t" if "gpu" not in machine else cpu_tag(machine)]
    return RESULTS / ("_".join(parts) + ".json")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    allocator_tuned = device.type == "cpu" and args.keep_freed_memory and keep_freed_memory()
    choice = decide_dtype(args, device)
    autocast_dtype = choice.autocast_dtype
    if args.memory_probe:
        result = run_probe(args, device, autocast_dtype)
        print(json.dumps(result))
        return result

    off_dtype = official_dtype(args, autocast_dtype)
    official = Official(args, device, off_dtype) if args.official else None  # fails early on a bad path
    ours = Ours(args, device, autocast_dtype)
    peak_dtype = autocast_dtype or torch.float32
    # Emulated bf16 (a CPU without avx512_bf16/AMX) takes about a minute per 2048 matmul: measure it smaller.
    emulated = device.type == "cpu" and torch.bfloat16 in (peak_dtype, off_dtype) and not onednn_bf16_available()
    peak_size = min(args.peak_size, 512) if emulated else args.peak_size
    # The official step's MFU is against the peak of its own precision when that differs from ours.
    off_peak_dtype = (off_dtype or torch.float32) if official is not None else peak_dtype
    peak_dtypes = {peak_dtype, off_peak_dtype}
    peaks_before = {dt: matmul_peaks(device, dt, peak_size) for dt in peak_dtypes}
    arch = arch_of(ours)
    samples = make_samples(args)
    t_ours, t_off, t_same = Timings(), Timings(), Timings()
    for i in tqdm(range(args.warmup + args.repeat), desc="steps (warm-up first)", file=sys.stderr):
        warm = i < args.warmup
        record(t_ours, ours.step(samples), arch, args.batch, warm)
        if official is not None:
            record(t_off, official.step(samples), arch, args.batch, warm)
            if args.same_masks:
                record(t_same, official.step(samples, ours.last_masks), arch, args.batch, warm)

    # Measured before and after the steps, the best kept: a busy machine can only lower it. MFU is against the
    # fastest kernel found in the step's precision, whichever implementation uses it.
    peaks_by_dtype = {}
    for dt in peak_dtypes:
        after = matmul_peaks(device, dt, peak_size)
        peaks_by_dtype[dt] = {k: max(v, after[k]) for k, v in peaks_before[dt].items()}
    peaks, off_peaks = peaks_by_dtype[peak_dtype], peaks_by_dtype[off_peak_dtype]
    peak = max(peaks.values())
    machine = machine_info(device)
    result = {
        "benchmark": "train_step",
        "config": {k: v for k, v in vars(args).items() if k not in ("official", "memory_probe", "out", "save")},
        "dtype": choice.precision,
        "precision": choice.record(),
        "machine": machine,
        "matmul_peak_dtype": str(peak_dtype).replace("torch.", ""),
        "matmul_peak_size": peak_size,
        "matmul_peak_flops_per_s": peak,
        "matmul_peaks_by_kernel": peaks,
        "onednn_linear": device.type == "cpu" and onednn_linear_available(),
        "onednn_bf16": device.type == "cpu" and onednn_bf16_available(),
        "kernels": kernels.current_kernels() if device.type == "cpu" else None,
        "keep_freed_memory": allocator_tuned,
        "ours": summarise(t_ours, arch, args.batch, peaks),
    }
    if official is not None:
        from _official import official_revision

        result["official_checkout_commit"] = official_revision(args.official)
        result["official_dtype"] = kernels.DTYPE_NAMES[off_dtype or torch.float32]
        if off_peak_dtype != peak_dtype:
            result["official_matmul_peak_dtype"] = str(off_peak_dtype).replace("torch.", "")
            result["official_matmul_peaks_by_kernel"] = off_peaks
        result["official"] = summarise(t_off, arch, args.batch, off_peaks)
        result["speedup_own_masks"] = result["ours"]["images_per_s"] / result["official"]["images_per_s"]
        result["flops_ratio_own_masks"] = (
            result["ours"]["flops_per_step_median"] / result["official"]["flops_per_step_median"]
        )
        if args.same_masks:
            result["official_same_masks"] = summarise(t_same, arch, args.batch, off_peaks)
            paired = [o / s for s, o in zip(t_ours.steps, t_same.steps)]
            result["speedup_same_masks"] = statistics.median(paired)
    if args.memory:
        result["ours"]["memory"] = memory_probe(argv, "ours")
        if official is not None:
            result["official"]["memory"] = memory_probe(argv, "official")
            if args.same_masks:
                result["official_same_masks"]["memory"] = memory_probe(argv, "official_same_masks")
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        tag = f"auto-{choice.precision}" if choice.requested == "auto" else choice.precision
        path = result_path(args, tag, machine)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"written to {path}", file=sys.stderr)
    return result


SETUPS = {  # the configurations of docs/benchmarks.md; explicit flags override them
    "small224": {"preset": "vit_small", "patch": 16, "img": 224, "batch": 16, "pred_dim": 384, "pred_depth": 6,
                 "min_keep": 10},
    "tiny32": {"preset": "vit_tiny", "patch": 4, "img": 32, "batch": 128, "pred_dim": 96, "pred_depth": 4,
               "min_keep": 4},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=sorted(SETUPS), default=None,
                   help="a named configuration (small224: ViT-S/16 224px b16 predictor 384x6; tiny32: ViT-Ti/4 "
                        "32px b128 predictor 96x4 min_keep 4); other flags override its values")
    p.add_argument("--preset", default="vit_small", help="encoder preset (vit_tiny, vit_small, vit_base, ...)")
    p.add_argument("--patch", type=int, default=16, help="patch size")
    p.add_argument("--img", type=int, default=224, help="image side in pixels")
    p.add_argument("--depth", type=int, default=None, help="encoder depth (default: the preset's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pred-dim", type=int, default=384, help="predictor width")
    p.add_argument("--pred-depth", type=int, default=6, help="predictor depth")
    p.add_argument("--min-keep", type=int, default=10, help="mask min_keep, for both samplers")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeat", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="fp32, bf16 or fp16 autocast, or auto: what train.precision=auto picks here (default: fp32 "
                        "on CPU, bf16 on GPU)")
    p.add_argument("--official-dtype", choices=["same", "fp32", "bf16"], default="same",
                   help="the official step's precision (default: the same as ours); --dtype auto --official-dtype "
                        "fp32 compares openjepa as it picks its precision with the official step as it runs by "
                        "default on a CPU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (the warm-up shows its cost)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in our backward")
    p.add_argument("--selective-recompute", action="store_true",
                   help="recompute only LayerNorm and GELU outputs in our backward (train.selective_recompute)")
    p.add_argument("--official", default=None, help="path of a facebookresearch/ijepa checkout to compare with")
    p.add_argument("--no-same-masks", dest="same_masks", action="store_false",
                   help="skip the official step on our masks (saves a third of the time)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory probes (each runs warmup+1 steps in a fresh process)")
    p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                   help="leave glibc's malloc returning freed memory to the system (both implementations are "
                        "affected alike: they share the process)")
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matmuls that measure the peak")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="result file (default: benchmarks/results/step_<setup>_<dtype>_...)")
    p.add_argument("--no-save", dest="save", action="store_false", help="print the result only")
    p.add_argument("--memory-probe", choices=["ours", "official", "official_same_masks"], default=None,
                   help=argparse.SUPPRESS)
    known, _ = p.parse_known_args(argv)
    if known.setup:
        p.set_defaults(**SETUPS[known.setup])
    return p.parse_args(argv)


if __name__ == "__main__":
    from _official import OfficialCheckoutError

    try:
        main()
    except OfficialCheckoutError as exc:
        sys.exit(f"error: {exc}")
