"""The monitor's second warning: accuracy falling below the run's own best (features getting worse with training,
not collapse), its threshold setting, and the history it is judged against (a resumed run's rows included)."""

from __future__ import annotations

import pytest

from openjepa.config import load_config
from openjepa.errors import ConfigError
from openjepa.eval import OnlineMonitor
from openjepa.eval.collapse import decline_problems, format_decline
from openjepa.train import Trainer
from openjepa.train.evaluation import RunMonitor
from openjepa.train.run_log import CsvLog, read_rows
from openjepa.train.runtime import setup_runtime
from test_train import tiny_config

# The online k-NN of the 60-minute Fashion-MNIST run (benchmarks/results/quality_fmnist_60min_seed0.json), after
# epochs 1-7: it peaked after epoch 2 and fell 4.6 points while the rank kept rising; nothing warned.
MEASURED = [0.657, 0.660, 0.623, 0.617, 0.614, 0.635, 0.639]


def _history(values, key="knn_top1"):
    return [{"step": 100 * (i + 1), "epoch": i + 1, key: v} for i, v in enumerate(values)]


@pytest.mark.parametrize("epoch, fires", [(2, False), (3, True), (4, True), (5, True), (6, False), (7, False)])
def test_the_measured_decline_is_flagged_at_the_default_threshold(epoch, fires):
    earlier = _history(MEASURED[:epoch - 1])
    problems = decline_problems({"knn_top1": MEASURED[epoch - 1], "rankme": 160.0}, earlier, 3.0)
    assert bool(problems) == fires
    if fires:
        assert "points below this run's best (0.660 after epoch 2)" in problems[0]
        assert problems[0].startswith(f"k-NN top-1 {MEASURED[epoch - 1]:.3f} is ")


def test_decline_threshold_off_and_first_run():
    falling = _history([0.9])
    assert decline_problems({"knn_top1": 0.5}, falling, None) == []
    assert decline_problems({"knn_top1": 0.5}, falling, 0.0) == []
    assert decline_problems({"knn_top1": 0.5}, [], 3.0) == []  # nothing to compare with yet
    assert decline_problems({"knn_top1": 0.89}, falling, 3.0) == []  # 1 point: within the monitor's noise
    linear = decline_problems({"linear_top1": 0.7}, _history([0.75], "linear_top1"), 3.0)
    assert len(linear) == 1 and linear[0].startswith("linear top-1 0.700 is 5.0 points below")


def test_decline_warning_text():
    assert format_decline([]) is None
    text = format_decline(["k-NN top-1 0.614 is 4.6 points below this run's best (0.660 after epoch 2)"])
    assert text.startswith("features getting worse with training: k-NN top-1 0.614")
    assert "shorter schedule" in text and "collapse" not in text


def test_decline_setting_is_checked():
    assert load_config("digits", ["eval.decline_warning_points=null"]).eval.decline_warning_points is None
    assert load_config("digits", []).eval.decline_warning_points == 3.0
    with pytest.raises(ConfigError, match="eval.decline_warning_points"):
        load_config("digits", ["eval.decline_warning_points=-1"])


def test_csv_rows_as_numbers_and_after_a_resume(tmp_path):
    path = tmp_path / "monitor.csv"
    log = CsvLog(path)
    for row in _history([0.61, 0.66, 0.62]):
        log.write({**row, "rankme": 12.5})
    assert read_rows(path)[1] == {"step": 200, "epoch": 2, "knn_top1": 0.66, "rankme": 12.5}
    assert isinstance(read_rows(path)[0]["step"], int)
    resumed = CsvLog(path, keep_until=200)  # resumed from the checkpoint of step 200: the later row is dropped
    assert [r["knn_top1"] for r in resumed.rows()] == [0.61, 0.66]
    assert read_rows(tmp_path / "missing.csv") == []


class _Online:
    def __init__(self, top1, warning=None):
        self.top1, self.last_warning = top1, warning

    def run(self, encoder):
        return {"knn_top1": self.top1}

    def describe(self, metrics):
        return f"knn top-1 {metrics['knn_top1']:.3f}"


def _run_monitor(tmp_path, online) -> RunMonitor:
    monitor = RunMonitor.__new__(RunMonitor)  # the scoring itself is tested elsewhere: only the verdicts here
    monitor.cfg, monitor.online, monitor.decline = tiny_config(tmp_path), online, None
    return monitor


def test_run_monitor_flags_the_decline_and_collapse_first(tmp_path):
    monitor = _run_monitor(tmp_path, _Online(0.60))
    monitor.run(None, _history([0.70]))
    assert monitor.flag == "WARNING: features getting worse (see log)"
    line = monitor.describe({"step": 200, "epoch": 2, "knn_top1": 0.60})
    assert line.splitlines()[1].startswith("warning: features getting worse with training: k-NN top-1 0.600 is 10.0")
    monitor.online.last_warning = "representation collapse suspected: ..."
    assert monitor.flag == "WARNING: collapse suspected (see log)"  # the more serious one wins the bar
    monitor.online.last_warning = None
    monitor.run(None, _history([0.59]))
    assert monitor.flag is None and monitor.decline is None


def test_a_run_warns_when_its_monitor_accuracy_falls(tmp_path, capsys, monkeypatch):
    scores = iter([0.30, 0.80, 0.70, 0.70])  # the random-init twin, then epochs 1, 2 and 3
    monkeypatch.setattr(OnlineMonitor, "run", lambda self, encoder: {"knn_top1": next(scores)})
    cfg = tiny_config(tmp_path / "run", "optim.epochs=3", "eval.online_every=1", "data.batch_size=32",
                      "train.progress_seconds=0", "eval.final_probe=false")
    Trainer(cfg, setup_runtime("cpu", "fp32")).run()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "monitor after epoch 1" in text and "features getting worse" not in text.split("monitor after epoch 2")[0]
    assert "warning: features getting worse with training: k-NN top-1 0.700 is 10.0 points below this run's best " \
           "(0.800 after epoch 1)" in text
    assert "WARNING: features getting worse (see log)" in text.split("monitor after epoch 2")[1]  # epoch 3's bar
