"""A bf16-autocast training step on CPU against the fp32 reference step (tests/reference_step.py).

Documented tolerance (docs/training.md): with bf16 matmuls (fp32 accumulation, fp32 master weights, LayerNorms,
loss, optimizer state and EMA) the loss stays within 0.2% of the fp32 reference and every parameter's gradient
within 3% (relative L2 error); measured here 0.003% and at most 0.7%. After an AdamW step the weights differ by at
most about the learning rate: Adam's first update is about +-lr per weight whatever the gradient's size, so a weight
whose gradient is near zero may move the other way.

Where oneDNN has no native bf16 (this project's test machine) the step runs autocast's own ``F.linear``; the
oneDNN bf16 path of ``fast_linear`` is then exercised with a stand-in for the oneDNN call that computes the same
product with ``F.linear`` in bf16, so that its casts, gradients and dtypes are checked on every machine.
"""

import pytest
import torch
import torch.nn.functional as F

from openjepa.models import fast_linear
from openjepa.step import make_optimizer, train_step
from reference_step import reference_loss, reference_optimizer, reference_step
from test_step_parity import LR, MOMENTUM, WD, batches, make_pair

LOSS_RTOL, GRAD_RTOL = 2e-3, 3e-2


@pytest.fixture(params=["platform", "onednn_bf16_stand_in"])
def bf16_linear(request, monkeypatch):
    """The bf16 linear path of this machine, and the oneDNN bf16 path with a stand-in kernel. Yields the list of
    dtypes the oneDNN call saw."""
    calls: list[torch.dtype] = []
    if request.param == "onednn_bf16_stand_in":
        def stand_in(x, weight, bias, activation="none"):
            calls.append(x.dtype)
            assert x.dtype == weight.dtype and (bias is None or bias.dtype == x.dtype)
            with torch.autocast("cpu", enabled=False):
                out = F.linear(x, weight, bias)
            return F.gelu(out) if activation == "gelu" else out

        monkeypatch.setattr(fast_linear, "_onednn", stand_in)
        monkeypatch.setattr(fast_linear, "onednn_linear_available", lambda: True)
        monkeypatch.setattr(fast_linear, "onednn_bf16_available", lambda: True)
    yield request.param, calls
    if request.param == "onednn_bf16_stand_in":
        assert calls and set(calls) == {torch.bfloat16}, "the oneDNN bf16 path was not taken"


def small_pair():
    """make_pair's model at a quarter of the width: bf16 matmuls are emulated (slow) on CPUs without bf16."""
    return make_pair(embed_dim=64, num_heads=2, pred_emb_dim=32)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).norm() / b.norm().clamp_min(1e-12))


def test_bf16_loss_and_gradients_match_fp32_reference(bf16_linear):
    fast, ref = small_pair()
    images, ctx, tgt = next(batches(fast, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fast(images, ctx, tgt)
    assert loss.dtype == torch.float32  # the loss is computed in fp32
    loss.backward()
    expected = reference_loss(ref, images, ctx, tgt)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=LOSS_RTOL, atol=0)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        if p.requires_grad:
            assert p.grad.dtype == torch.float32, name  # fp32 master weights get fp32 gradients
            assert relative_error(p.grad, q.grad) < GRAD_RTOL, name


def test_bf16_step_keeps_fp32_state_and_stays_near_reference(bf16_linear):
    fast, ref = small_pair()
    fast_opt, ref_opt = make_optimizer(fast), reference_optimizer(ref)
    for images, ctx, tgt in batches(fast, 1):
        out = train_step(fast, fast_opt, images, ctx, tgt, LR, WD, MOMENTUM, autocast_dtype=torch.bfloat16)
        expected = reference_step(ref, ref_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        torch.testing.assert_close(out.loss, expected, rtol=LOSS_RTOL, atol=0)
    for (name, p), q in zip(fast.state_dict().items(), ref.state_dict().values()):
        assert p.dtype == torch.float32, name  # weights, EMA teacher
        torch.testing.assert_close(p, q, rtol=0, atol=2.5 * LR, msg=lambda m: f"{name}: {m}")
    for state in fast_opt.state.values():
        assert all(v.dtype == torch.float32 for k, v in state.items() if k != "step")


def test_bf16_parity_check_has_teeth(monkeypatch):
    """A oneDNN call that loses the bias (a wrong argument, say) fails the tolerance."""
    def no_bias(x, weight, bias, activation="none"):
        with torch.autocast("cpu", enabled=False):
            out = F.linear(x, weight)
        return F.gelu(out) if activation == "gelu" else out

    monkeypatch.setattr(fast_linear, "_onednn", no_bias)
    monkeypatch.setattr(fast_linear, "onednn_linear_available", lambda: True)
    monkeypatch.setattr(fast_linear, "onednn_bf16_available", lambda: True)
    fast, ref = small_pair()
    images, ctx, tgt = next(batches(fast, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fast(images, ctx, tgt)
    loss.backward()
    reference_loss(ref, images, ctx, tgt).backward()
    errors = [relative_error(p.grad, q.grad) for p, q in zip(fast.parameters(), ref.parameters()) if p.requires_grad]
    assert max(errors) > GRAD_RTOL


def test_fast_linear_in_bf16_autocast(bf16_linear):
    g = torch.Generator().manual_seed(0)
    x0, w0, b0 = torch.randn(3, 9, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (x0, w0, b0)]
    plain = [t.clone().requires_grad_(True) for t in (x0, w0, b0)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast_linear.linear(*leaves)
        expected = F.linear(*plain)
        with torch.no_grad():
            fused = fast_linear.linear_gelu(x0, w0, b0)
            unfused = F.gelu(F.linear(x0, w0, b0))
    assert out.dtype == expected.dtype == fused.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fused, unfused, rtol=1e-2, atol=1e-2)
    grad = torch.randn(out.shape, generator=g).bfloat16()
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(leaves, plain):
        assert a.grad.dtype == torch.float32
        assert relative_error(a.grad, b.grad) < 1e-2


def test_onednn_self_check_is_not_fooled_by_autocast():
    """The availability checks run once, at the first linear layer, which may be inside a bf16 autocast region:
    their fp32 references must stay fp32 there (a failed check would turn oneDNN off for the whole process)."""
    outside = fast_linear.onednn_linear_available.__wrapped__(), fast_linear.onednn_bf16_available.__wrapped__()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fast_linear.onednn_linear_available.__wrapped__(), fast_linear.onednn_bf16_available.__wrapped__()
    assert inside == outside
