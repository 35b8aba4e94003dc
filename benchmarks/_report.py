"""Shared by the benchmarks: what machine a result was measured on, and how a result is printed and kept."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch


def machine_info(device: torch.device | None = None, load_key: str = "load_average") -> dict:
    """Python, torch, threads, CPU model (and GPU name on CUDA), and the load average when this is called."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    info["lscpu_model_name"] = lscpu_model_name()
    info["cpu_flags"] = cpu_flags()
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = list(torch.cuda.get_device_capability(device))
    try:
        info[load_key] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


MATMUL_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # what decides a CPU's matmul speeds


def lscpu_model_name() -> str | None:
    """``Model name`` as ``lscpu`` prints it (None where there is no lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return match.group(1).strip() if match else None


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`MATMUL_FLAGS` the CPU reports (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return {}
    flags = set(line.split(":", 1)[-1].split())
    return {flag: flag in flags for flag in MATMUL_FLAGS} if flags else {}


def cpu_tag(info: dict) -> str:
    """A short file-name tag for the machine: the GPU's name, or the CPU's with its best matmul feature (the
    model name alone can hide it: KVM guests report "AMD EPYC" for Zen 3 and Zen 5 alike), e.g. ``amd-epyc-avx2``,
    ``intel-xeon-platinum-8480c-amx``."""
    if info.get("gpu"):
        name = info["gpu"].lower()
    else:
        name = (info.get("lscpu_model_name") or info.get("cpu") or "unknown").lower()
        name = re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*$|\bprocessor\b|\d+-core", " ", name)
        flags = info.get("cpu_flags") or {}
        best = next((tag for flag, tag in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"),
                                           ("avx2", "avx2")) if flags.get(flag)), "")
        name = f"{name[:40]} {best}"
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def publish(report: dict, out: Path) -> None:
    """Print ``report`` as JSON and write it to ``out`` (folders created)."""
    text = json.dumps(report, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
