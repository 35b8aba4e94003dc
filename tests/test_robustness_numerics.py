"""Numerical faults: a NaN/inf loss stops the run naming the step and the last good checkpoint, and a NaN never
reaches a checkpoint; ``train.skip_nonfinite`` skips a few bad batches instead.

Faults are injected as real NaNs: a poisoned batch (NaN pixels give a NaN loss through the real forward pass), or
a NaN written into a weight after a real step (what a blown-up update looks like while the loss is still finite).
"""

import math

import pytest
import torch
from test_robustness_crash import CRASH, assert_same_weights, cli_args
from test_robustness_inputs import cli_error
from test_train import TINY, losses, tiny_config, weights

from openjepa.checkpoint import load_checkpoint
from openjepa.data.collate import MaskCollator
from openjepa.train import TrainingDiverged, pretrain
from openjepa.train import trainer as trainer_module
from openjepa.train.runtime import setup_runtime

RUN_SETTINGS = CRASH[len(TINY):]  # 3 steps per epoch, a checkpoint after each epoch


@pytest.fixture
def poison(monkeypatch):
    """``poison((epoch, step), ...)``: the batches at those positions (0-based) arrive full of NaN pixels."""
    real = MaskCollator.__call__
    bad: set[tuple[int, int]] = set()

    def collate(self, samples):
        batch = real(self, samples)
        key = samples[0][-1]
        if (key.epoch, key.step) in bad:
            batch.images.fill_(math.nan)
        return batch

    monkeypatch.setattr(MaskCollator, "__call__", collate)
    return lambda *positions: bad.update(positions)


def test_nan_loss_stops_before_touching_weights_or_checkpoints(tmp_path, poison):
    poison((1, 1))  # the 5th step (second of epoch 2); epoch 1 was saved at step 3
    run = tmp_path / "run"
    trainer = trainer_module.Trainer(tiny_config(run, *RUN_SETTINGS), setup_runtime("cpu", "fp32"))
    saved = (run / "jepa-latest.pth.tar")
    with pytest.raises(TrainingDiverged) as caught:
        trainer.run()
    message = str(caught.value)
    assert message.startswith("training diverged: loss is nan at step 5 (epoch 2); the step was not applied")
    assert f"the last good checkpoint is {saved} (step 3)" in message
    assert f"openjepa pretrain --resume {run}" in message and "train.skip_nonfinite" in message
    assert load_checkpoint(saved)["step"] == 3
    assert [s for s, _ in losses(run)] == [1, 2, 3, 4]

    four = tmp_path / "four"  # the weights in memory are those after step 4: the NaN step changed nothing
    pretrain(tiny_config(four, *RUN_SETTINGS, "train.max_steps=4"))
    reference = weights(four)
    for section, module in (("encoder", trainer.model.encoder), ("predictor", trainer.model.predictor),
                            ("target_encoder", trainer.model.target_encoder)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, reference[section][key]), (section, key)
    three = tmp_path / "three"  # and the checkpoint on disk is still the step-3 one
    pretrain(tiny_config(three, *RUN_SETTINGS, "train.max_steps=3"))
    assert_same_weights(three, run)


def test_nan_loss_through_the_cli_is_one_paragraph_and_saves_nothing(tmp_path, capsys, poison):
    poison((0, 0))
    run = tmp_path / "run"
    err = cli_error(capsys, cli_args(run))
    assert "loss is nan at step 1 (epoch 1)" in err and "no checkpoint was saved yet" in err
    assert not (run / "jepa-latest.pth.tar").exists()


def test_skip_nonfinite_skips_and_counts_bad_batches(tmp_path, capsys, poison):
    poison((0, 1), (2, 0))
    run = tmp_path / "run"
    result = pretrain(tiny_config(run, *RUN_SETTINGS, "train.skip_nonfinite=2"))
    assert result.stop_reason == "completed" and result.position.global_step == 24
    out = capsys.readouterr().out
    assert "warning: loss is nan at step 2; batch skipped, weights untouched (1/2 allowed" in out
    assert "warning: loss is nan at step 7; batch skipped, weights untouched (2/2 allowed" in out
    assert [s for s, _ in losses(run)] == [s for s in range(1, 25) if s not in (2, 7)]
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert all(torch.isfinite(v).all() for v in state["target_encoder"].values())

    poison((4, 2))  # a third bad batch is one too many
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 15 .* the last good checkpoint is .*\(step 12\)"):
        pretrain(tiny_config(tmp_path / "again", *RUN_SETTINGS, "train.skip_nonfinite=2"))


def test_nan_weights_behind_a_finite_loss_never_reach_a_checkpoint(tmp_path, monkeypatch):
    real_step = trainer_module.accumulated_step
    calls = {"n": 0}

    def step_then_blow_up(model, *args, **kwargs):
        out = real_step(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # the last step of epoch 2, just before its checkpoint
            with torch.no_grad():
                model.predictor.predictor_proj.weight[0, 0] = math.inf
        return out

    monkeypatch.setattr(trainer_module, "accumulated_step", step_then_blow_up)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        pretrain(tiny_config(run, *RUN_SETTINGS))
    message = str(caught.value)
    assert "the weights hold NaN or inf values after step 6 (first: predictor.predictor_proj.weight)" in message
    assert f"no checkpoint was written and the last good checkpoint is {run / 'jepa-latest.pth.tar'} (step 3)" \
        in message
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for part in ("encoder", "predictor", "target_encoder")
               for v in state[part].values())
