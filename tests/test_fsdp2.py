"""FSDP2 (``fully_shard``) on I-JEPA with the EMA teacher sharded like the student: 2 gloo processes on CPU give
the losses and weights of one process (see tests/fsdp2_harness.py for how the model is sharded). Not wired into
the trainer yet, hence slow-marked: it records what works with this torch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp2_two_gloo_processes_match_one():
    harness = Path(__file__).with_name("fsdp2_harness.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(harness)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "FSDP2 OK" in proc.stdout
