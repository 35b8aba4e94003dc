"""The fast training step (openjepa.step.train_step) against the plain reference of tests/reference_step.py.

Same weights, same images and masks, fp32: loss, gradients, weights and EMA teacher must agree to float rounding
after several steps, whatever shortcuts the fast path takes.
"""

import copy

import pytest
import torch

from openjepa import MultiBlockMaskSampler, build_ijepa
from openjepa.step import make_optimizer, train_step
from reference_step import reference_loss, reference_optimizer, reference_step

LR, WD, MOMENTUM = 1e-3, 0.04, 0.9  # a low momentum makes the EMA move visibly


def make_pair(**overrides):
    cfg = dict(arch="vit_tiny", patch_size=4, img_size=32, depth=2, pred_depth=2, pred_emb_dim=48)
    cfg.update(overrides)
    torch.manual_seed(0)
    fast = build_ijepa(**cfg)
    with torch.no_grad():  # non-trivial LayerNorms, biases and mask token
        for p in list(fast.encoder.parameters()) + list(fast.predictor.parameters()):
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    fast.target_encoder.load_state_dict(fast.encoder.state_dict())
    return fast.train(), copy.deepcopy(fast).train()


def batches(model, count, batch=4):
    g = torch.Generator().manual_seed(1)
    sampler = MultiBlockMaskSampler(model.encoder.grid_size, min_keep=4)
    for _ in range(count):
        masks = sampler.sample(batch, g)
        yield torch.randn(batch, 3, 32, 32, generator=g), masks.context, masks.targets


def assert_same_weights(fast, ref):
    # AdamW divides each gradient by its running RMS: for the odd weight whose gradient is ~1e-8, float rounding in
    # the gradient moves the update by a visible fraction of the lr. An error in the fast path moves thousands of
    # weights by about the lr; the tolerance sits far below that.
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=LR / 20, msg=lambda m: f"{name}: {m}")
        assert (p - q).abs().gt(1e-6).float().mean() < 1e-3, f"{name}: many weights differ"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pred_depth": 1},  # the first predictor block is also the last
        {"pred_depth": 3, "loss": "mse"},
        {"target": "pixels"},
    ],
    ids=["default", "pred_depth1", "pred_depth3_mse", "pixels"],
)
def test_fast_step_matches_reference(overrides):
    fast, ref = make_pair(**overrides)
    fast_opt, ref_opt = make_optimizer(fast), reference_optimizer(ref)
    for images, ctx, tgt in batches(fast, 3):
        out = train_step(fast, fast_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        ref_loss = reference_step(ref, ref_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-7)
        assert_same_weights(fast, ref)
    assert not torch.equal(fast.target_encoder.blocks[0].attn.qkv.weight, fast.encoder.blocks[0].attn.qkv.weight)


def test_gradients_match_reference():
    fast, ref = make_pair(pred_depth=3)
    images, ctx, tgt = next(batches(fast, 1))
    fast(images, ctx, tgt).backward()
    reference_loss(ref, images, ctx, tgt).backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        if p.requires_grad:
            assert p.grad is not None and q.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_gradient_checkpointing_matches_reference():
    fast, ref = make_pair(pred_depth=3)
    fast.encoder.set_grad_checkpointing(True)
    fast.predictor.set_grad_checkpointing(True)
    fast_opt, ref_opt = make_optimizer(fast), reference_optimizer(ref)
    for images, ctx, tgt in batches(fast, 2):
        out = train_step(fast, fast_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        ref_loss = reference_step(ref, ref_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-7)
    assert_same_weights(fast, ref)


def test_reference_detects_a_wrong_fast_path(monkeypatch):
    """The comparison has teeth: a last predictor block whose queries forget the context is caught."""
    from openjepa.models import Block

    fast, ref = make_pair()
    images, ctx, tgt = next(batches(fast, 1))
    expected = reference_loss(ref, images, ctx, tgt)
    with torch.no_grad():
        torch.testing.assert_close(fast(images, ctx, tgt), expected, rtol=1e-5, atol=1e-7)
        monkeypatch.setattr(Block, "forward_last", lambda self, x, n: self(x[:, x.shape[1] - n :]))
        wrong = fast(images, ctx, tgt)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
def test_fast_linear_matches_f_linear_forward_and_backward(bias):
    from openjepa.models import fast_linear

    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 9, 40, generator=g)
    for x0 in (base, base[:, 2:7], base.transpose(0, 1)):  # contiguous, sliced and transposed inputs
        for out_features in (24, 72):  # weight gradient taken in both orientations
            w0 = torch.randn(out_features, 40, generator=g)
            b0 = torch.randn(out_features, generator=g) if bias else None
            leaves = [t.clone().requires_grad_(True) for t in (x0, w0) + ((b0,) if bias else ())]
            plain = [t.clone().detach().requires_grad_(True) for t in leaves]
            fast = fast_linear.linear(*leaves)
            ref = torch.nn.functional.linear(*plain)
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
            grad = torch.randn(ref.shape, generator=g)
            fast.backward(grad)
            ref.backward(grad)
            for a, b in zip(leaves, plain):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(fast_linear.linear_gelu(base, w0, b0),
                                   torch.nn.functional.gelu(torch.nn.functional.linear(base, w0, b0)),
                                   rtol=1e-5, atol=1e-5)


def test_fast_linear_takes_onednn_exactly_where_it_should(monkeypatch, kernels):
    from openjepa.models import fast_linear

    calls = []
    real = fast_linear._onednn
    monkeypatch.setattr(fast_linear, "_onednn", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    fast_linear.linear(x, w)
    assert len(calls) == (1 if fast_linear.onednn_linear_available() else 0)
    calls.clear()
    fast_linear.linear(x.double(), w.double())  # other dtypes: plain F.linear
    assert not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps its say: bf16, through oneDNN where native
        out = fast_linear.linear(x, w)
    assert out.dtype == torch.bfloat16 and len(calls) == (1 if fast_linear.onednn_bf16_available() else 0)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.float16):  # fp16: no oneDNN path
        fast_linear.linear(x, w)
    kernels.use_kernels(linear={"fp32": "aten"})  # the measured choice can send fp32 to F.linear too
    fast_linear.linear(x, w)
    assert not calls


@pytest.fixture
def kernels():
    from openjepa.models import kernels

    yield kernels
    kernels.reset_kernels()


@pytest.mark.parametrize("choice", [{"linear": {"fp32": "aten"}}, {"attention": {"fp32": "explicit"}}],
                         ids=["aten_linear", "explicit_attention"])
def test_fast_step_matches_reference_with_each_kernel(kernels, choice):
    kernels.use_kernels(**choice)
    fast, ref = make_pair()
    fast_opt, ref_opt = make_optimizer(fast), reference_optimizer(ref)
    for images, ctx, tgt in batches(fast, 1):
        out = train_step(fast, fast_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        ref_loss = reference_step(ref, ref_opt, images, ctx, tgt, LR, WD, MOMENTUM)
        torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-7)
    assert_same_weights(fast, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_attention_matches_sdpa(kernels, dtype):
    from openjepa.models.layers import scaled_dot_product

    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 11, 3 * 4 * 8, generator=g).to(dtype)
    grad = torch.randn(3, 4, 11, 8, generator=g).to(dtype)
    results = []
    for kernel in ("sdpa", "explicit"):
        kernels.use_kernels(attention={"fp32": kernel, "bf16": kernel})
        leaf = qkv.clone().requires_grad_(True)
        q, k, v = (t.unflatten(-1, (4, 8)).transpose(1, 2) for t in leaf.split(32, dim=-1))  # strided, as the model
        out = scaled_dot_product(q, k, v)
        out.backward(grad)
        results.append((out.float(), leaf.grad.float()))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """Under torch.compile (where the linear layers fall back to F.linear) the numbers stay those of eager mode."""
    eager, compiled = make_pair(pred_depth=2)
    runner = torch.compile(compiled, dynamic=True)
    for images, ctx, tgt in batches(eager, 2):
        expected = eager(images, ctx, tgt)
        got = runner(images, ctx, tgt)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        expected.backward()
        got.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
