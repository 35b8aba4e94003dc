"""GPU check: openjepa's training step on a CUDA GPU against the official code, in one JSON.

Run through ``benchmarks/gpu_check.sh`` (it checks for CUDA first). Four checks, each recorded whether it passes or
not (the others still run), then one JSON file ``gpu_check_<gpu>.json`` in ``--out``:

1. ``sdpa``: one bf16 training step (forward + backward) of each shape with SDPA restricted to the flash kernel,
   then to the memory-efficient kernel, then to both: a fallback to the math kernel raises instead of passing
   silently. Passes when the restriction to both works.
2. ``parity``: one training step of a small model in fp32 (TF32 off), fp32 with TF32, and bf16 autocast on the GPU,
   against the same step in fp32 on the CPU: loss and per-parameter gradient errors, with the tolerances of
   ``tests/test_bf16_step.py`` for bf16 (loss 0.2%, gradients 3% relative L2).
3. ``step_<shape>``: ``benchmarks/step.py`` in bf16 against the official code (``--official``), for small224
   (ViT-S/16) and huge224 (ViT-H/14), peak memory included (``torch.cuda.max_memory_allocated`` of a fresh
   process per implementation).
4. ``compile_small224``: the same step under ``torch.compile`` (ours only): compilation time (the warm-up steps)
   and step time.

``--dry-run-on-cpu`` runs the same code on the CPU with tiny shapes, to test this script without a GPU; its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import cpu_tag, machine_info  # noqa: E402

from openjepa import MultiBlockMaskSampler, build_ijepa  # noqa: E402
from openjepa.masks import MaskConfig  # noqa: E402

LOSS_RTOL, GRAD_RTOL = 2e-3, 3e-2  # tests/test_bf16_step.py
SHAPES = {  # benchmarks/step.py setups; the SDPA check uses the same models
    "small224": {"arch": "vit_small", "patch_size": 16, "img_size": 224, "pred_depth": 6, "pred_emb_dim": 384,
                 "batch": 16, "min_keep": 10},
    "huge224": {"arch": "vit_huge", "patch_size": 14, "img_size": 224, "pred_depth": 12, "pred_emb_dim": 384,
                "batch": 16, "min_keep": 10},
}
DRY_SHAPES = {"tiny": {"arch": "vit_tiny", "patch_size": 4, "img_size": 32, "pred_depth": 2, "pred_emb_dim": 48,
                       "batch": 4, "min_keep": 4, "depth": 2}}


def model_and_batch(shape: dict, device: torch.device, seed: int = 0):
    """A model of ``shape`` on ``device`` and one batch of images and masks (seeded)."""
    cfg = {k: v for k, v in shape.items() if k not in ("batch", "min_keep")}
    torch.manual_seed(seed)
    model = build_ijepa(**cfg).to(device).train()
    g = torch.Generator().manual_seed(seed)
    masks = MultiBlockMaskSampler(model.encoder.grid_size, MaskConfig(min_keep=shape["min_keep"])).sample(
        shape["batch"], g)
    images = torch.randn(shape["batch"], 3, shape["img_size"], shape["img_size"], generator=g)
    return model, images.to(device), masks.context.to(device), masks.targets.to(device)


def fwd_bwd(model, images, ctx, tgt, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = model(images, ctx, tgt)
    loss.backward()
    return loss.detach()


# -- 1. SDPA kernels -------------------------------------------------------------------------------------------------
def check_sdpa(shapes: dict, device: torch.device) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    restrictions = {"flash": [SDPBackend.FLASH_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
                    "flash_or_efficient": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]}
    out: dict = {}
    for name, shape in shapes.items():
        model, images, ctx, tgt = model_and_batch(shape, device)
        out[name] = {}
        for label, backends in restrictions.items():
            model.zero_grad(set_to_none=True)
            try:
                with sdpa_kernel(backends):
                    loss = fwd_bwd(model, images, ctx, tgt, torch.bfloat16)
                out[name][label] = {"ok": bool(torch.isfinite(loss)), "loss": float(loss)}
            except RuntimeError as exc:  # "No available kernel": SDPA would have fallen back to the math kernel
                out[name][label] = {"ok": False, "error": str(exc).splitlines()[0][:300]}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["ok"] = all(v["flash_or_efficient"]["ok"] for k, v in out.items() if isinstance(v, dict))
    return out


# -- 2. parity -------------------------------------------------------------------------------------------------------
def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_parity(device: torch.device) -> dict:
    """One step of a small model: GPU fp32 / fp32+TF32 / bf16 against CPU fp32."""
    shape = {"arch": "vit_small", "patch_size": 16, "img_size": 64, "pred_depth": 2, "pred_emb_dim": 96,
             "batch": 8, "min_keep": 4, "depth": 4}
    ref, images, ctx, tgt = model_and_batch(shape, torch.device("cpu"))
    ref_loss = fwd_bwd(ref, images, ctx, tgt, None)
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    out: dict = {"tolerances": {"loss_rtol": LOSS_RTOL, "grad_rtol": GRAD_RTOL}}
    try:
        for label, dtype, allow_tf32 in (("fp32", None, False), ("fp32_tf32", None, True), ("bf16", torch.bfloat16,
                                                                                             False)):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
            model = copy.deepcopy(ref).to(device)
            model.zero_grad(set_to_none=True)
            loss = fwd_bwd(model, images.to(device), ctx.to(device), tgt.to(device), dtype)
            errors = {n: relative_error(p.grad.cpu(), ref_grads[n]) for n, p in model.named_parameters()
                      if p.requires_grad}
            worst = max(errors, key=errors.get)
            out[label] = {"loss": float(loss), "loss_rel_error": abs(float(loss) - float(ref_loss)) / float(ref_loss),
                          "grad_rel_error_max": errors[worst], "grad_rel_error_max_param": worst}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["cpu_fp32_loss"] = float(ref_loss)
    bf16 = out["bf16"]
    out["ok"] = bf16["loss_rel_error"] < LOSS_RTOL and bf16["grad_rel_error_max"] < GRAD_RTOL and (
        out["fp32"]["grad_rel_error_max"] < 1e-3)
    return out


# -- 3. and 4. the step benchmark ------------------------------------------------------------------------------------
def run_step_benchmark(flags: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.json"
        cmd = [sys.executable, str(HERE / "step.py"), *flags, "--out", str(out)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0 or not out.exists():
            return {"ok": False, "command": " ".join(cmd), "returncode": proc.returncode,
                    "stderr_tail": proc.stderr[-3000:]}
        result = json.loads(out.read_text())
    result["ok"] = True
    result["command"] = " ".join(cmd)
    result["wall_s"] = time.perf_counter() - started
    return result


def step_flags(args, name: str) -> list[str]:
    if args.dry_run_on_cpu:
        base = ["--preset", "vit_tiny", "--patch", "4", "--img", "32", "--depth", "2", "--batch", "4",
                "--pred-dim", "48", "--pred-depth", "2", "--min-keep", "4", "--device", "cpu", "--dtype", "bf16",
                "--warmup", "1", "--repeat", "1", "--peak-size", "128", "--threads", "1"]
    else:
        s = SHAPES[name]
        base = ["--preset", s["arch"], "--patch", str(s["patch_size"]), "--img", str(s["img_size"]),
                "--batch", str(s["batch"]), "--pred-dim", str(s["pred_emb_dim"]), "--pred-depth", str(s["pred_depth"]),
                "--min-keep", str(s["min_keep"]), "--device", "cuda", "--dtype", "bf16", "--peak-size", "8192",
                "--warmup", str(args.warmup), "--repeat", str(args.repeat)]
    return base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="openjepa GPU check (see benchmarks/gpu_check.sh)")
    p.add_argument("--official", required=True, help="path of a facebookresearch/ijepa checkout")
    p.add_argument("--out", required=True, help="folder for gpu_check_<gpu>.json")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile measurement")
    p.add_argument("--step-timeout", type=float, default=1800, help="seconds allowed per step benchmark")
    p.add_argument("--dry-run-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.dry_run_on_cpu and not torch.cuda.is_available():
        print("error: gpu_check needs a CUDA GPU and torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run_on_cpu else "cuda")
    shapes = DRY_SHAPES if args.dry_run_on_cpu else SHAPES
    report: dict = {"benchmark": "gpu_check", "machine": machine_info(device), "dry_run_on_cpu": args.dry_run_on_cpu,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    checks = {"sdpa": lambda: check_sdpa(shapes, device), "parity": lambda: check_parity(device)}
    for name in shapes:
        checks[f"step_{name}"] = lambda n=name: run_step_benchmark(
            step_flags(args, n) + ["--official", args.official], args.step_timeout)
    if not args.skip_compile:
        first = next(iter(shapes))
        checks[f"compile_{first}"] = lambda n=first: run_step_benchmark(
            step_flags(args, n) + ["--compile", "--no-memory"], args.step_timeout)
    for name, check in checks.items():
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            report[name] = check()
        except Exception as exc:  # noqa: BLE001 - one failed check must not lose the others' results
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(f"gpu_check: {name}: {'ok' if report[name].get('ok') else 'FAILED'}", file=sys.stderr, flush=True)
    report["ok"] = all(v.get("ok") for k, v in report.items() if k in checks)
    report["summary"] = summary(report, checks)
    out = Path(args.out) / f"gpu_check_{cpu_tag(report['machine'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"gpu_check: written to {out}", file=sys.stderr)
    return 0 if report["ok"] else 1


def summary(report: dict, checks: dict) -> dict:
    """The numbers worth a glance: pass/fail per check, speed-ups, step times, peak memory, parity errors."""
    out: dict = {name: bool(report[name].get("ok")) for name in checks}
    for name in checks:
        r = report[name]
        if name.startswith(("step_", "compile_")) and r.get("ok"):
            ours = r["ours"]
            out[f"{name}_ours"] = {"step_s": ours["step_s_median"], "mfu": ours["mfu"], "warmup_s": ours["warmup_s"],
                                   "max_memory_allocated_bytes": ours.get("memory", {}).get(
                                       "max_memory_allocated_bytes")}
            for key in ("speedup_own_masks", "speedup_same_masks"):
                if key in r:
                    out[f"{name}_{key}"] = r[key]
            if "official" in r:
                out[f"{name}_official"] = {"step_s": r["official"]["step_s_median"], "mfu": r["official"]["mfu"],
                                           "max_memory_allocated_bytes": r["official"].get("memory", {}).get(
                                               "max_memory_allocated_bytes")}
    if report["parity"].get("ok") is not None and "bf16" in report["parity"]:
        out["parity_bf16"] = report["parity"]["bf16"]
    return out


if __name__ == "__main__":
    sys.exit(main())
