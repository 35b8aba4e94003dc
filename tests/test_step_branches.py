"""The branches of openjepa.step.train_step that the fp32 parity tests do not take: gradient clipping (with torch's
norm helpers and with the fallback used before torch 2.6) and fp16 loss scaling with a GradScaler (CPU's, which
runs the same code as CUDA's), checked against independent computations."""

import pytest
import torch
from torch import nn

from openjepa.step import make_optimizer, train_step
from reference_step import reference_loss
from test_step_parity import LR, MOMENTUM, WD, batches, make_pair


def reference_grads(model, images, ctx, tgt):
    """Gradients of the plain reference loss (tests/reference_step.py) and their total 2-norm, computed by hand."""
    model.zero_grad(set_to_none=True)
    reference_loss(model, images, ctx, tgt).backward()
    params = [p for p in list(model.encoder.parameters()) + list(model.predictor.parameters()) if p.grad is not None]
    grads = [p.grad.detach().clone() for p in params]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    model.zero_grad(set_to_none=True)
    return grads, norm


def step_grads(model):
    return [p.grad for p in list(model.encoder.parameters()) + list(model.predictor.parameters())
            if p.grad is not None]


@pytest.fixture(params=["torch", "fallback"])
def norm_helpers(request, monkeypatch):
    """torch >= 2.6 has nn.utils.get_total_norm / clip_grads_with_norm_; older versions take step.py's fallback."""
    if request.param == "fallback":
        monkeypatch.delattr(nn.utils, "get_total_norm", raising=False)
        monkeypatch.delattr(nn.utils, "clip_grads_with_norm_", raising=False)
    return request.param


@pytest.mark.parametrize("ratio", [0.1, 10.0])  # the clip threshold as a multiple of the true norm
def test_clipping_scales_the_gradients_to_the_threshold(norm_helpers, ratio):
    fast, ref = make_pair()
    images, ctx, tgt = next(batches(fast, 1))
    expected, norm = reference_grads(ref, images, ctx, tgt)
    max_norm = ratio * norm
    out = train_step(fast, make_optimizer(fast), images, ctx, tgt, LR, WD, MOMENTUM, grad_clip=max_norm)
    assert out.grad_norm.item() == pytest.approx(norm, rel=1e-4) and out.read[1] == pytest.approx(norm, rel=1e-4)
    scale = min(1.0, max_norm / (norm + 1e-6))
    got = step_grads(fast)  # what AdamW stepped with
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e * scale, rtol=1e-4, atol=1e-9)
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in got)).item()
    assert total == pytest.approx(min(norm, max_norm), rel=1e-4)


def test_without_clipping_no_norm_is_computed():
    fast, _ = make_pair()
    out = train_step(fast, make_optimizer(fast), *next(batches(fast, 1)), LR, WD, MOMENTUM)
    assert out.grad_norm is None and out.read[1] != out.read[1]  # nan: nothing measured


def test_grad_scaler_step_equals_the_unscaled_step():
    """A loss scaled by 2^10 and unscaled before clipping and AdamW gives the step an fp32 run takes: same norm, same
    clipped gradients, same weights (powers of two scale exactly)."""
    plain, scaled = make_pair()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt_plain, opt_scaled = make_optimizer(plain), make_optimizer(scaled)
    for images, ctx, tgt in batches(plain, 2):
        a = train_step(plain, opt_plain, images, ctx, tgt, LR, WD, MOMENTUM, grad_clip=0.05)
        b = train_step(scaled, opt_scaled, images, ctx, tgt, LR, WD, MOMENTUM, grad_clip=0.05, scaler=scaler)
        assert b.grad_norm.item() == pytest.approx(a.grad_norm.item(), rel=1e-5)
        for g, h in zip(step_grads(plain), step_grads(scaled)):
            assert torch.allclose(g, h, rtol=1e-5, atol=1e-10)
    for (name, p), q in zip(plain.named_parameters(), scaled.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), name
    assert scaler.get_scale() == 2.0**10  # finite gradients: the scale stays (growth only after 2000 steps)


def test_grad_scaler_skips_the_update_on_infinite_gradients():
    """An overflow in the scaled gradients (the loss itself finite) skips AdamW and halves the scale."""
    model, _ = make_pair()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    optimizer = make_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    hook = model.encoder.blocks[0].mlp.fc1.weight.register_hook(lambda g: g * float("inf"))
    out = train_step(model, optimizer, *next(batches(model, 1)), LR, WD, MOMENTUM, scaler=scaler)
    hook.remove()
    assert out.read[0] == out.read[0] and abs(out.read[0]) < float("inf")  # the loss was finite
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[name]), name  # no weight moved
    assert scaler.get_scale() == 2.0**9
