"""model.regularizer_fade: the regulariser's weight fading to 0, so that a run ends on the paper's objective."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from openjepa.config import load_config
from openjepa.errors import ConfigError
from openjepa.schedules import Schedules, fade_out
from openjepa.train import pretrain
from test_regularizers import _tiny
from test_train import tiny_config


def test_fade_out_is_a_half_cosine_then_zero():
    assert fade_out(0, 100) == 1.0
    assert fade_out(50, 100) == pytest.approx(0.5)
    assert fade_out(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert fade_out(100, 100) == 0.0 and fade_out(250, 100) == 0.0
    assert fade_out(10**6, None) == 1.0  # no fade: a constant weight


def test_schedules_fade_over_the_given_fraction_of_their_steps():
    constant = Schedules(total_steps=1000, warmup_steps=100)
    assert {constant.regularizer_factor_at(s) for s in (0, 500, 1000, 2000)} == {1.0}
    half = Schedules(total_steps=1000, warmup_steps=100, regularizer_fade=0.5)
    assert half.regularizer_factor_at(0) == 1.0
    assert half.regularizer_factor_at(250) == pytest.approx(0.5)
    assert half.regularizer_factor_at(500) == 0.0 and half.regularizer_factor_at(999.5) == 0.0
    assert half.regularizer_factor_at(123.25) == pytest.approx(fade_out(123.25, 500))  # fractional positions
    assert half.at(300) == constant.at(300)  # the paper's three schedules do not change


def test_the_factor_scales_only_the_regulariser_term():
    model, images, masks = _tiny(regularizer="vicreg", regularizer_weight=0.5)
    plain, _, _ = _tiny()
    plain.load_state_dict(model.state_dict())
    keys = set(model.state_dict())
    full = model(images, masks.context, masks.targets)
    paper = plain(images, masks.context, masks.targets)
    model.set_regularizer_factor(0.25)
    quarter = model(images, masks.context, masks.targets)
    assert torch.allclose(quarter - paper, 0.25 * (full - paper), atol=1e-6)
    assert (full - paper).item() > 1e-3  # the term is not negligible here, so the check above means something
    model.set_regularizer_factor(0.0)
    assert torch.allclose(model(images, masks.context, masks.targets), paper, atol=1e-7)
    assert set(model.state_dict()) == keys  # the checkpoint keys stay the released ones


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5"])
def test_fade_setting_is_checked(value):
    with pytest.raises(ConfigError, match="regularizer_fade"):
        load_config("digits", [f"model.regularizer_fade={value}"])


def test_fade_setting_defaults_to_a_constant_weight():
    assert load_config("digits", []).model.regularizer_fade is None
    assert load_config("digits", ["model.regularizer_fade=0.5"]).model.regularizer_fade == 0.5


def _factors(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["regularizer_factor"]) for r in csv.DictReader(f)]


def test_a_run_logs_its_fading_factor_and_resumes_it_exactly(tmp_path):
    extra = ["model.regularizer=vicreg", "model.regularizer_fade=0.5", "data.batch_size=16", "optim.epochs=2"]
    pretrain(tiny_config(tmp_path / "run", *extra))
    factors = _factors(tmp_path / "run")
    # 16 steps; the schedules span them, so the factor of step k (logged at k + 1) is fade_out(k, 8).
    assert factors == pytest.approx([fade_out(k, 8) for k in range(16)], abs=1e-6)  # as the CSV prints it
    assert factors[0] == 1.0 and factors[8:] == [0.0] * 8
    pretrain(tiny_config(tmp_path / "half", *extra, "train.max_steps=5"))
    pretrain(tiny_config(tmp_path / "half", *extra), resume=tmp_path / "half" / "jepa-latest.pth.tar")
    assert _factors(tmp_path / "half") == factors


def test_a_run_without_fade_logs_no_factor(tmp_path):
    pretrain(tiny_config(tmp_path / "run", "model.regularizer=vicreg", "data.batch_size=16"))
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        assert "regularizer_factor" not in next(csv.reader(f))
