"""Run ``openjepa`` in a child process that tests can kill, signal and watch.

Used by the robustness tests. As a script (``python tests/crash_harness.py --pause mid-write --at 2 -- pretrain
...``) it runs the real CLI after arranging for the process to stop dead inside its ``--at``-th checkpoint write,
so that a test can SIGKILL it at exactly that point instead of hoping a random delay lands there:

* ``mid-write``: half of the checkpoint's bytes are in the temporary file, the rest never comes;
* ``before-rename``: the temporary file is complete but not yet renamed over the previous checkpoint.

The process prints ``crash-harness: paused <stage>`` and sleeps until it is killed.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

PAUSED = "crash-harness: paused"
SCRIPT = Path(__file__).resolve()


# -- the child side -------------------------------------------------------------------------------------------------
def _pause_forever(stage: str) -> None:
    print(f"{PAUSED} {stage}", flush=True)
    while True:
        time.sleep(60)


def install_pause(stage: str, at: int) -> None:
    """Make the ``at``-th checkpoint write of this process stop at ``stage`` (see the module docstring)."""
    import torch

    real_save, real_replace = torch.save, os.replace
    count = {"save": 0, "replace": 0}

    def save(obj, f, *args, **kwargs):
        count["save"] += 1
        if stage != "mid-write" or count["save"] != at:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        _pause_forever(stage)

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".pth.tar"):
            count["replace"] += 1
            if stage == "before-rename" and count["replace"] == at:
                _pause_forever(stage)
        return real_replace(src, dst, *args, **kwargs)

    torch.save = save
    os.replace = replace


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", choices=("mid-write", "before-rename"), required=True)
    parser.add_argument("--at", type=int, default=1, help="which checkpoint write of this process (from 1)")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the openjepa arguments")
    args = parser.parse_args(argv)
    install_pause(args.pause, args.at)
    from openjepa.cli.main import main

    return main([a for a in args.cli if a != "--"])


# -- the test side --------------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """One thread per child (the machine is shared) and the source tree importable without installing."""
    src = str(SCRIPT.parent.parent / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path,
            "PYTHONUNBUFFERED": "1"}


class Child:
    """``openjepa ARGS`` in a subprocess: its stdout lines are collected by a thread, stderr goes to a file."""

    def __init__(self, args: list[str], log: Path, pause: str | None = None, at: int = 1,
                 env: dict[str, str] | None = None, new_session: bool = False):
        if pause is None:
            cmd = [sys.executable, "-m", "openjepa", *args]
        else:
            cmd = [sys.executable, str(SCRIPT), "--pause", pause, "--at", str(at), "--", *args]
        self.log = log
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env=env or child_env(), start_new_session=new_session)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 180.0) -> str:
        """The first stdout line containing ``text``; fails if the process ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                raise AssertionError(f"exited ({self.proc.returncode}) before printing {text!r}:\n{self.output()}")
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output()}")

    def kill(self, sig: int) -> bool:
        """Send ``sig``; False when the process had already exited."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, sig)
        return True

    def finish(self, timeout: float = 300.0) -> int:
        """Wait for the exit; return the exit status (negative: killed by that signal)."""
        rc = self.proc.wait(timeout=timeout)
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                break
            self.lines.append(line)
        self._stderr.close()
        return rc

    def output(self) -> str:
        """Everything printed so far (stdout lines, then the tail of stderr), for assertion messages."""
        if not self._stderr.closed:
            self._stderr.flush()
        err = self.log.read_text(errors="replace")[-3000:]
        return "\n".join(self.lines) + "\n--- stderr ---\n" + err


def wait_for_rows(csv_path: Path, rows: int, child: Child, timeout: float = 180.0) -> None:
    """Wait until ``csv_path`` (a run's metrics.csv) holds ``rows`` data rows: training is under way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) > rows:
            return
        if child.proc.poll() is not None:
            raise AssertionError(f"exited ({child.proc.returncode}) before {rows} steps:\n{child.output()}")
        time.sleep(0.02)
    raise AssertionError(f"fewer than {rows} steps after {timeout} s:\n{child.output()}")


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
