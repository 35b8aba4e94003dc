"""Gradient accumulation: micro-batches add up to the full batch (step, data, trainer), and the settings that ask
for it are checked with messages that name the numbers."""

import pytest
import torch
from test_step_parity import LR, MOMENTUM, WD, assert_same_weights, make_pair
from test_train import losses, run_two_processes, tiny_config, weights

from openjepa import MultiBlockMaskSampler
from openjepa.checkpoint import load_checkpoint
from openjepa.config import accumulation_steps, load_config
from openjepa.errors import ConfigError
from openjepa.step import accumulated_step, train_step
from openjepa.train import pretrain


def test_four_micro_batches_of_8_make_one_batch_of_32():
    """Loss, gradients (before and after clipping), weights and teacher after 2 steps, fp32: equal to float
    rounding (the sums run in another order)."""
    whole, parts = make_pair(embed_dim=64, num_heads=4)
    sampler = MultiBlockMaskSampler(whole.encoder.grid_size, min_keep=4)
    g = torch.Generator().manual_seed(1)
    opt_whole, opt_parts = (torch.optim.AdamW(m.param_groups(), lr=0.0) for m in (whole, parts))
    teacher_before = [p.clone() for p in whole.target_encoder.parameters()]
    for _ in range(2):
        masks = sampler.sample(32, g)
        images = torch.randn(32, 3, 32, 32, generator=g)
        a = train_step(whole, opt_whole, images, masks.context, masks.targets, LR, WD, MOMENTUM, grad_clip=0.5)
        rows = [torch.arange(k, 32, 4) for k in range(4)]  # micro-batch k holds rows k, k+4, ... (virtual ranks)
        micro = [(images[r], masks.context[r], masks.targets[:, r]) for r in rows]
        b = accumulated_step(parts, opt_parts, micro, LR, WD, MOMENTUM, grad_clip=0.5)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(b.grad_norm, a.grad_norm, rtol=1e-5, atol=0)
        for (name, p), q in zip(whole.named_parameters(), parts.parameters()):
            if p.grad is not None:  # the clipped gradients the optimizer used
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")
    assert_same_weights(whole, parts)  # encoder, predictor and the EMA teacher (named parameters of IJEPA)
    teacher = list(whole.target_encoder.parameters())
    assert all(torch.allclose(p, q, atol=LR / 20) for p, q in zip(teacher, parts.target_encoder.parameters()))
    assert sum(not torch.equal(p, q) for p, q in zip(teacher, teacher_before)) > len(teacher) // 2  # EMA moved


# The paper's objective: a regulariser on batch statistics (model.regularizer, on in the digits recipe) is computed
# per micro-batch and process, so only without one does accumulation reproduce the whole batch exactly.
PAPER = "model.regularizer=none"


@pytest.fixture(scope="module")
def batch_of_32(tmp_path_factory):
    """The 1-process run at a global batch of 32 (8 steps), which accumulated runs must reproduce."""
    run = tmp_path_factory.mktemp("batch32") / "run"
    pretrain(tiny_config(run, "data.batch_size=32", PAPER))
    return run


def assert_same_run(a, b, tolerance=1e-5):
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, 9))
    for (_, x), (_, y) in zip(la, lb):
        assert abs(x - y) < tolerance * max(1.0, abs(x)), (la, lb)
    wa, wb = weights(a), weights(b)
    for section in wa:
        for key in wa[section]:
            assert torch.allclose(wa[section][key], wb[section][key], atol=1e-5), (section, key)


def test_one_process_accumulating_4_micro_batches_matches_the_batch_of_32(batch_of_32, tmp_path):
    """The loader hands each micro-batch the images and masks of its rows of the global batch (same crops, same
    masks): the losses of every step and the final weights are those of the 32-image run."""
    run = tmp_path / "run"
    result = pretrain(tiny_config(run, "data.batch_size=8", "data.global_batch=32", PAPER))
    assert result.position.global_step == 8
    assert_same_run(batch_of_32, run)
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert (state["batch_size"], state["accum_steps"], state["global_batch"]) == (8, 4, 32)


def test_two_processes_accumulating_match_one_process(batch_of_32, tmp_path):
    """2 gloo processes x 2 micro-batches of 8 (DDP no_sync on the first) = the 1-process batch of 32."""
    run = tmp_path / "two"
    run_two_processes(run, "data.batch_size=8", "optim.accum_steps=2", PAPER)
    assert_same_run(batch_of_32, run)


# -- the settings ---------------------------------------------------------------------------------------------------
def config(*overrides):
    return load_config("digits", list(overrides))


def test_accumulation_is_derived_from_the_global_batch():
    assert accumulation_steps(config("data.batch_size=128"), 8) == 1
    assert accumulation_steps(config("data.batch_size=128", "data.global_batch=2048"), 8) == 2
    assert accumulation_steps(config("data.batch_size=128", "data.global_batch=2048"), 1) == 16
    assert accumulation_steps(config("data.batch_size=16", "optim.accum_steps=3"), 2) == 3
    assert accumulation_steps(config("data.batch_size=16", "optim.accum_steps=3", "data.global_batch=96"), 2) == 3


@pytest.mark.parametrize("overrides, world, message", [
    (["data.batch_size=128", "data.global_batch=2048"], 3,
     r"data.global_batch=2048 is not a whole number of micro-batches: data.batch_size x processes = 128 x 3 = 384 "
     r"images per micro-batch, and 2048 / 384 = 5.333. 2048 images cannot be split evenly over 3 processes: use "
     r"another number of processes, or data.global_batch=1920 or 2304"),
    (["data.batch_size=96", "data.global_batch=2048"], 8,
     r"2048 / 768 = 2.667. Use data.batch_size=64 \(4 micro-batches per step\), or data.global_batch=1536 or 2304"),
    (["data.batch_size=32", "data.global_batch=16"], 1,
     r"16 / 32 = 0.5. Use data.batch_size=16 \(1 micro-batch per step\), or data.global_batch=32"),
    (["data.batch_size=128", "data.global_batch=2048", "optim.accum_steps=4"], 2,
     r"data.global_batch=2048 and optim.accum_steps=4 disagree: data.batch_size x processes = 128 x 2 = 256, times "
     r"4 micro-batches makes 1024. Set only one of them"),
])
def test_impossible_batch_settings_are_refused_with_the_numbers(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        accumulation_steps(config(*overrides), world)


def test_accumulation_settings_are_validated():
    with pytest.raises(ConfigError, match="optim.accum_steps must be >= 1"):
        config("optim.accum_steps=0")
    with pytest.raises(ConfigError, match="data.global_batch must be >= 1"):
        config("data.global_batch=0")
