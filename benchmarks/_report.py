"""Shared by the benchmarks: what machine a result was measured on, and how a result is printed and kept."""

from __future__ import annotations

import json
import os
import platform
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
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info[load_key] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def publish(report: dict, out: Path) -> None:
    """Print ``report`` as JSON and write it to ``out`` (folders created)."""
    text = json.dumps(report, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
