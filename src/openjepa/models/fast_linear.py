"""Linear layers through oneDNN on CPU, in fp32 and in bf16 autocast.

PyTorch computes fp32 ``F.linear`` on CPU with MKL, which runs its slower generic code path on non-Intel CPUs: on
an AMD EPYC (AVX-512) it reaches about 200 GFLOP/s on two cores where oneDNN, which ships inside PyTorch, reaches
about 440 (2048x2048 fp32). :func:`linear` sends the forward matmul and both backward matmuls of a layer through
oneDNN (``torch.ops.mkldnn._linear_pointwise``): the weight gradient in whichever orientation its kernel runs
fastest, and, without autograd, exact GELU fused into the matmul.

Under CPU autocast with bf16 the same path runs in bf16, as autocast's ``F.linear`` would: input, weight and bias
are cast to bf16 (the fp32 master weights receive fp32 gradients through the cast), products accumulate in fp32
inside oneDNN, outputs are bf16. It is taken only where oneDNN has native bf16 kernels (``avx512_bf16`` or AMX)
and a numerical self-check passes; elsewhere bf16 autocast keeps ``F.linear``.

Which of oneDNN and ``F.linear`` serves each dtype is :mod:`.kernels`' choice (measured by ``openjepa pretrain``
at start-up). ``F.linear`` is used regardless on GPUs, in other dtypes, under autocast to fp16, inside
``torch.compile`` (Inductor makes its own choices there), with ``torch.backends.mkldnn`` disabled, or when this
build lacks the operator or fails the self-check. ``OPENJEPA_ONEDNN_LINEAR=0`` turns the oneDNN path off.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from . import kernels
from .recompute import recomputable


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"):
    """``activation(x @ weight.T + bias)``; ``activation`` is ``"none"`` or ``"gelu"`` (exact, erf-based)."""
    algorithm = "none" if activation == "gelu" else ""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)


def _self_check(dtype: torch.dtype, tol: float) -> bool:
    """The forward (plain and GELU-fused) and both backward products of :class:`_OneDNNLinear` against ``F.linear``
    on a small odd-sized problem, in ``dtype``, computed in fp32 from the same rounded inputs."""
    g = torch.Generator().manual_seed(0)
    x, w, b, grad = (torch.randn(shape, generator=g).to(dtype) for shape in ((7, 3, 40), (24, 40), (24,), (21, 24)))
    x2 = x.reshape(-1, 40)
    pairs = [
        (_onednn(x, w, b), F.linear(x.float(), w.float(), b.float())),
        (_onednn(x, w, b, "gelu"), F.gelu(F.linear(x.float(), w.float(), b.float()))),
        (_onednn(grad, w.t(), None), grad.float() @ w.float()),  # grad-input orientation
        (_weight_grad(grad, x2), grad.float().t() @ x2.float()),  # grad-weight orientations
        (_weight_grad(grad, x2[:, :16]), grad.float().t() @ x2[:, :16].float()),
    ]
    return all(got.dtype == dtype and torch.allclose(got.float(), want, rtol=tol, atol=tol) for got, want in pairs)


def _check(dtype: torch.dtype, tol: float) -> bool:
    try:
        # The first call may come from inside a bf16 autocast region: the fp32 references must stay fp32.
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            return _self_check(dtype, tol)
    except (RuntimeError, TypeError, NotImplementedError):  # e.g. "could not create a primitive descriptor"
        return False


@functools.cache
def onednn_linear_available() -> bool:
    """Whether the oneDNN fp32 linear works in this PyTorch build (checked once against ``F.linear``)."""
    if os.environ.get("OPENJEPA_ONEDNN_LINEAR", "1") == "0":
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return _check(torch.float32, 1e-4)


@functools.cache
def onednn_bf16_available() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU and they pass the self-check. Without ``avx512_bf16``
    or AMX it has none (creating the primitive fails), and PyTorch's own bf16 matmuls are emulated there."""
    if not onednn_linear_available():
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if supported is None or not supported():
            return False
    except RuntimeError:
        return False
    return _check(torch.bfloat16, 3e-2)  # bf16 outputs carry 8 bits of mantissa: ~0.4% rounding, sums of 40 terms


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype in which oneDNN computes ``x @ weight.T`` here, or None for ``F.linear``."""
    if x.device.type != "cpu" or not torch.backends.mkldnn.enabled or torch.compiler.is_compiling():
        return None  # compiled graphs: Inductor does not lower this op on plain weights; it picks its own
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        if dtype != torch.bfloat16 or x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype not in (
            torch.float32, torch.bfloat16
        ):
            return None
    elif x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16):
        dtype = x.dtype
    else:
        return None
    if kernels.linear_kernel(dtype) != "onednn":
        return None
    available = onednn_linear_available() if dtype == torch.float32 else onednn_bf16_available()
    return dtype if available else None


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad.T @ x`` (``[N, T] @ [T, K]``). oneDNN's kernel is fastest when the wider of ``N`` and ``K`` is its
    output width, so the product is taken in whichever orientation makes it so (measured 1.3-1.9x MKL)."""
    if x.shape[1] >= grad.shape[1]:
        return _onednn(grad.t(), x.t(), None)
    return _onednn(x.t(), grad.t(), None).t()


class _OneDNNLinear(torch.autograd.Function):
    """Inputs of one dtype (fp32, or bf16 after the caller's casts); the gradients come out in that dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1]).to(x.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad_2d, weight.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad_2d, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0, dtype=torch.float32).to(x.dtype)  # the sum in fp32, like oneDNN's products
        return grad_x, grad_w, grad_b


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _cast(dtype: torch.dtype, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Cast to the compute dtype, as autocast does for ``F.linear``. The cast input is recomputable from ``x``
    (see :mod:`.recompute`): when ``x`` is, the bf16 copy that backward keeps need not be kept either."""
    if x.dtype != dtype:
        x = recomputable(x.to(dtype), _to_dtype, x, dtype)
    weight = weight.to(dtype)
    return x, weight, None if bias is None else bias.to(dtype)


def _to_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where that is faster (see the module docstring)."""
    dtype = _onednn_dtype(x, weight)
    if dtype is None:
        return F.linear(x, weight, bias)
    x, weight, bias = _cast(dtype, x, weight, bias)
    if _needs_grad(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn(x, weight, bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact GELU); without autograd, one fused oneDNN call. With autograd
    the GELU output is recomputable from the matmul's (see :mod:`.recompute`)."""
    dtype = None if _needs_grad(x, weight, bias) else _onednn_dtype(x, weight)
    if dtype is None:
        hidden = linear(x, weight, bias)
        return recomputable(F.gelu(hidden), F.gelu, hidden)
    x, weight, bias = _cast(dtype, x, weight, bias)
    return _onednn(x, weight, bias, "gelu")
