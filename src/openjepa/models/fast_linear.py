"""Linear layers through oneDNN on CPU in fp32.

PyTorch computes fp32 ``F.linear`` on CPU with MKL, which runs its slower generic code path on non-Intel CPUs: on
an AMD EPYC (AVX-512) it reaches about 200 GFLOP/s on two cores where oneDNN, which ships inside PyTorch, reaches
about 440 (2048x2048 fp32). :func:`linear` sends the forward matmul and both backward matmuls of a layer through
oneDNN's fp32 kernels (``torch.ops.mkldnn._linear_pointwise``) and falls back to ``F.linear`` everywhere else: on
GPUs, in other dtypes, under autocast, inside ``torch.compile`` (Inductor makes its own choices there), with
``torch.backends.mkldnn`` disabled, or when this build of PyTorch lacks the operator or fails a numerical
self-check. The results are fp32 matmuls
accumulated in fp32, equal to MKL's to float rounding (no reduced-precision mode is involved).

``OPENJEPA_ONEDNN_LINEAR=0`` in the environment turns the oneDNN path off.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"):
    """``activation(x @ weight.T + bias)``; ``activation`` is ``"none"`` or ``"gelu"`` (exact, erf-based)."""
    algorithm = "none" if activation == "gelu" else ""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)


@functools.cache
def onednn_linear_available() -> bool:
    """Whether the oneDNN fp32 linear works in this PyTorch build (checked once against ``F.linear``)."""
    if os.environ.get("OPENJEPA_ONEDNN_LINEAR", "1") == "0":
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(shape, generator=g) for shape in ((7, 3, 40), (24, 40), (24,)))
        with torch.no_grad():
            plain = _onednn(x, w, b)
            fused = _onednn(x, w, b, "gelu")
            ok = torch.allclose(plain, F.linear(x, w, b), rtol=1e-4, atol=1e-4)
            ok = ok and torch.allclose(fused, F.gelu(F.linear(x, w, b)), rtol=1e-4, atol=1e-4)
        return bool(ok)
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # Inductor does not lower this op on plain weights; it picks its own
        and onednn_linear_available()
    )


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad.T @ x`` (``[N, T] @ [T, K]``). oneDNN's kernel is fastest when the wider of ``N`` and ``K`` is its
    output width, so the product is taken in whichever orientation makes it so (measured 1.3-1.9x MKL)."""
    if x.shape[1] >= grad.shape[1]:
        return _onednn(grad.t(), x.t(), None)
    return _onednn(x.t(), grad.t(), None).t()


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad_2d, weight.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad_2d, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where that is faster (see the module docstring)."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if _needs_grad(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn(x, weight, bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact GELU); without autograd, one fused oneDNN call."""
    if _needs_grad(x, weight, bias) or not _use_onednn(x, weight):
        return F.gelu(linear(x, weight, bias))
    return _onednn(x, weight, bias, "gelu")
