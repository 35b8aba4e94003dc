"""Progress display: a bar on a terminal, plain lines every ``train.progress_seconds`` without one (CI, nohup,
SLURM), so that logs hold no carriage-return frames."""

import io

from test_train import tiny_config

from openjepa.train import pretrain, progress
from openjepa.train.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_one_plain_line_every_interval(monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["now"])
    out = io.StringIO()
    shown = Progress(total=100, initial=0, epochs=4, log_every=10, seconds=30.0, stream=out)
    for step in range(1, 11):  # 10 steps, 5 s apart: 50 s, so exactly one line (at 30 s)
        clock["now"] += 5
        shown.update(step, 0, loss=float(step), lr=1e-3, images_per_s=100.0)
    shown.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("step 6/100 (6%) | epoch 1/4 | loss 3.5000 | lr 1.00e-03 | 100 img/s | 0m30s")


def test_on_a_terminal_a_progress_bar():
    out = Terminal()
    shown = Progress(total=5, initial=0, epochs=1, log_every=2, seconds=30.0, stream=out)
    for step in range(1, 6):
        shown.update(step, 0, loss=0.5, lr=1e-3, images_per_s=10.0)
    shown.close()
    assert "\r" in out.getvalue() and "5/5" in out.getvalue() and "step 5/5 (" not in out.getvalue()


def test_processes_other_than_the_first_show_nothing():
    out = Terminal()
    shown = Progress(total=5, initial=0, epochs=1, enabled=False, stream=out)
    shown.update(1, 0, loss=0.5, lr=1e-3, images_per_s=10.0)
    shown.close()
    assert out.getvalue() == ""


def test_a_run_logged_to_a_file_has_no_carriage_returns(tmp_path, capsys):
    pretrain(tiny_config(tmp_path / "run", "data.batch_size=16", "train.max_steps=3", "train.progress_seconds=0"))
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert [line.split(" ")[1] for line in lines] == ["1/16", "2/16", "3/16"]
