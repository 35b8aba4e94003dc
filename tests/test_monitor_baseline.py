"""The monitor's reference point: the same architecture at random initialisation, scored once before training,
and the warnings when a trained encoder does no better or spans fewer directions than it."""

import io

import torch

from openjepa.eval import OnlineMonitor
from openjepa.eval.collapse import baseline_problems, format_warning
from openjepa.train.progress import Progress
from test_monitors import quadrant_images, small_cfg, tiny_vit
from test_train import tiny_config

from openjepa.train import Trainer
from openjepa.train.runtime import setup_runtime


def test_baseline_problems_compare_accuracy_and_rank():
    base = {"knn_top1": 0.60, "rankme": 9.0, "feature_std": 0.02}
    assert baseline_problems({"knn_top1": 0.70, "rankme": 20.0, "feature_std": 0.01}, base) == []
    below = baseline_problems({"knn_top1": 0.58, "rankme": 20.0}, base)
    assert len(below) == 1 and "k-NN top-1 0.580 is not above" in below[0] and "(0.600)" in below[0]
    equal = baseline_problems({"knn_top1": 0.60, "rankme": 20.0}, base)
    assert len(equal) == 1  # "no better" is a warning too
    narrow = baseline_problems({"knn_top1": 0.70, "rankme": 4.5}, base)
    assert len(narrow) == 1 and "RankMe) 4.5 is below the random-init encoder's 9.0" in narrow[0]
    assert baseline_problems({"linear_top1": 0.5}, {"linear_top1": 0.6})[0].startswith("linear top-1 0.500")
    assert format_warning([]) is None
    assert format_warning(below + narrow).startswith("representation collapse suspected: k-NN")


def _position_only(encoder):
    """What I-JEPA collapses to at small scale: the patch content is gone, only the positions are left."""
    with torch.no_grad():
        encoder.patch_embed.proj.weight.zero_()
        encoder.patch_embed.proj.bias.zero_()
    return encoder


def test_monitor_warns_when_a_position_only_encoder_is_no_better_than_random_init():
    monitor = OnlineMonitor(small_cfg(), quadrant_images(300, 0), quadrant_images(200, 1), "cpu")
    baseline = monitor.set_baseline(tiny_vit())
    assert monitor.baseline == baseline and monitor.last_warning is None  # the reference itself never warns
    collapsed = monitor.run(_position_only(tiny_vit()))
    assert collapsed["knn_top1"] < baseline["knn_top1"]
    warning = monitor.last_warning
    assert warning is not None and "not above the same architecture at random init" in warning
    assert "below the random-init encoder's" in warning
    # an encoder that is better than the reference raises nothing
    monitor.baseline = collapsed
    monitor.run(tiny_vit())
    assert monitor.last_warning is None


def test_progress_shows_the_alert_in_plain_lines():
    out = io.StringIO()
    progress = Progress(total=10, initial=0, epochs=1, seconds=0.0, stream=out)
    progress.update(1, 0, 0.5, 1e-3, 100.0)
    progress.flag("WARNING: collapse suspected (see log)")
    progress.update(2, 0, 0.4, 1e-3, 100.0)
    progress.flag(None)
    progress.update(3, 0, 0.4, 1e-3, 100.0)
    first, second, third = out.getvalue().splitlines()
    assert "WARNING" not in first and second.endswith("| WARNING: collapse suspected (see log)")
    assert "WARNING" not in third


def test_a_run_scores_the_baseline_first_and_flags_a_collapsed_teacher(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", "optim.epochs=2", "eval.online_every=1", "data.batch_size=32",
                      "train.progress_seconds=0",
                      "eval.online_train_samples=200", "eval.online_test_samples=100", "optim.ema=[1.0,1.0]")
    runtime = setup_runtime("cpu", "fp32")
    trainer = Trainer(cfg, runtime)
    _position_only(trainer.model.target_encoder)  # EMA momentum 1: the teacher stays collapsed
    trainer.run()
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "monitor, same architecture at random init: knn top-1" in err
    assert captured.out.index("same architecture at random init") < captured.out.index("monitor after epoch 1")
    assert "not above the same architecture at random init" in err
    assert "WARNING: collapse suspected" in err  # the plain progress line (no terminal under pytest)
