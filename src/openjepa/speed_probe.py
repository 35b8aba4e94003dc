"""Time the CPU kernel candidates at a model's own shapes: what :mod:`openjepa.precision` decides from.

For each dtype (fp32, and bf16 under autocast with fp32 master weights, as a training step runs it) this times the
forward + backward of the model's MLP layers through each linear kernel (oneDNN, ``F.linear``) and of its
attention through each attention kernel (SDPA, explicit), for the encoder and the predictor (pretraining) or the
encoder alone (fine-tuning). bf16 is first screened on a small single-threaded matmul: where bf16 is emulated (no
``avx512_bf16``/AMX) it runs at a few hundredths of fp32 or less, and timing it at the model's shapes would take
minutes; a bf16 kernel whose first call takes :data:`GIVE_UP_FACTOR` times fp32's best is not timed further either.
The batch is scaled down so that one repetition is at most :data:`MAX_FLOPS_PER_REP`: about half a second on two
cores for the small models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import kernels
from .models.fast_linear import linear, onednn_bf16_available, onednn_linear_available
from .models.layers import scaled_dot_product
from .precision import CpuRates, best_time

MAX_FLOPS_PER_REP = 4e9
SCREEN_SIZE = 256  # side of the bf16 screening matmul: big enough that AMX clearly beats fp32 (4-6x on one core;
# at 128 the two are level), small enough if emulated (about 30 ms at 0.01x fp32)
SCREEN_PASS = 0.5  # bf16 slower than this fraction of fp32 on the screen is not timed further
GIVE_UP_FACTOR = 20.0

LinearShape = tuple[int, int, int]  # (tokens, in_features, out_features)
AttentionShape = tuple[int, int, int, int]  # (sequences, heads, length, head_dim)


@dataclass(frozen=True)
class ProbeShapes:
    """The matmul shapes of one training step, scaled to a short measurement."""

    linear: tuple[LinearShape, ...]
    attention: tuple[AttentionShape, ...]

    def signature(self) -> str:
        """A stable text key for the cache."""
        lin = ",".join("x".join(map(str, s)) for s in self.linear)
        att = ",".join("x".join(map(str, s)) for s in self.attention)
        return f"linear {lin}; attention {att}"


def probe_shapes(embed_dim: int, num_heads: int, mlp_ratio: float, pred_dim: int, pred_heads: int, batch: int,
                 context_len: int, target_len: int, num_targets: int = 4) -> ProbeShapes:
    """Shapes of the context encoder's and the predictor's MLP and attention for one step, at a batch scaled
    down (never below one image) to :data:`MAX_FLOPS_PER_REP`."""
    hidden, pred_hidden = int(embed_dim * mlp_ratio), int(pred_dim * mlp_ratio)
    pred_len = context_len + target_len

    def shapes(b: int) -> ProbeShapes:
        enc_tokens, pred_seqs = b * context_len, b * num_targets
        return ProbeShapes(
            ((enc_tokens, embed_dim, hidden), (enc_tokens, hidden, embed_dim),
             (pred_seqs * pred_len, pred_dim, pred_hidden), (pred_seqs * pred_len, pred_hidden, pred_dim)),
            ((b, num_heads, context_len, embed_dim // num_heads),
             (pred_seqs, pred_heads, pred_len, pred_dim // pred_heads)),
        )

    return _scaled(shapes, batch)


def encoder_probe_shapes(embed_dim: int, num_heads: int, mlp_ratio: float, batch: int, tokens: int) -> ProbeShapes:
    """Shapes of an encoder's MLP and attention over ``tokens`` patches per image, without a predictor: what a
    fine-tuning step multiplies (the whole image goes through the encoder), scaled down like :func:`probe_shapes`."""
    hidden = int(embed_dim * mlp_ratio)

    def shapes(b: int) -> ProbeShapes:
        return ProbeShapes(((b * tokens, embed_dim, hidden), (b * tokens, hidden, embed_dim)),
                           ((b, num_heads, tokens, embed_dim // num_heads),))

    return _scaled(shapes, batch)


def _scaled(shapes, batch: int) -> ProbeShapes:
    """``shapes(b)`` at the largest ``b <= batch`` (at least one image) whose repetition stays within
    :data:`MAX_FLOPS_PER_REP`."""
    per_image = probe_flops(shapes(1))
    return shapes(max(1, min(batch, int(MAX_FLOPS_PER_REP // max(per_image, 1.0)))))


def probe_flops(shapes: ProbeShapes) -> float:
    """Matmul FLOPs of one repetition (forward + backward = 3x forward)."""
    linear_flops = sum(2 * m * k * n for m, k, n in shapes.linear)
    attention_flops = sum(4 * s * h * n * n * d for s, h, n, d in shapes.attention)
    return 3 * (linear_flops + attention_flops)


def _autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def linear_rate(shapes: ProbeShapes, dtype: str, kernel: str, give_up_after: float | None = None) -> float:
    """FLOP/s of the MLP layers' forward + backward through ``kernel`` (bf16: autocast over fp32 weights)."""
    g = torch.Generator().manual_seed(0)
    layers = []
    for m, k, n in shapes.linear:
        x = torch.randn(m, k, generator=g).requires_grad_()
        w = (torch.randn(n, k, generator=g) * k**-0.5).requires_grad_()
        b = torch.zeros(n).requires_grad_()
        grads = {dt: torch.randn(m, n, generator=g).to(dt) for dt in (torch.float32, torch.bfloat16)}
        layers.append((x, w, b, grads))

    def step() -> None:
        for x, w, b, grads in layers:
            with _autocast(dtype):
                y = linear(x, w, b)
            torch.autograd.grad(y, (x, w, b), grads[y.dtype])

    with kernels.using_kernels(linear={dtype: kernel}):
        seconds = best_time(step, give_up_after=give_up_after)
    return 3 * sum(2 * m * k * n for m, k, n in shapes.linear) / seconds


def attention_rate(shapes: ProbeShapes, dtype: str, kernel: str, give_up_after: float | None = None) -> float:
    """FLOP/s of attention forward + backward through ``kernel``, on q/k/v read as strided views of one
    ``qkv`` projection (as the model does), in the compute dtype."""
    g = torch.Generator().manual_seed(0)
    work = []
    for s, h, n, d in shapes.attention:
        qkv = torch.randn(s, n, 3 * h * d, generator=g).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
        work.append((qkv.requires_grad_(), h, d))

    def step() -> None:
        for qkv, h, d in work:
            q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in qkv.split(h * d, dim=-1))
            out = scaled_dot_product(q, k, v)
            torch.autograd.grad(out, qkv, torch.ones_like(out))

    with kernels.using_kernels(attention={dtype: kernel}):
        seconds = best_time(step, give_up_after=give_up_after)
    return 3 * sum(4 * s * h * n * n * d for s, h, n, d in shapes.attention) / seconds


def bf16_screen() -> float:
    """bf16 over fp32 rate of one small ``torch.mm`` on one thread (a small multi-threaded matmul on a busy machine
    measures thread wake-ups, not arithmetic).

    Each dtype gets one call before its timing starts: oneDNN builds its bf16 kernel (AMX tile set-up included) on
    the first call, which took 1.4-1.8 ms on an AMX Xeon, 30-70x a 128-wide fp32 product. Counted in, that call
    read as "bf16 at 0.014x fp32" there and ruled bf16 out on the CPU where it is fastest.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SCREEN_SIZE, SCREEN_SIZE, generator=g)
    b = torch.randn(SCREEN_SIZE, SCREEN_SIZE, generator=g)
    a16, b16 = a.bfloat16(), b.bfloat16()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.mm(a, b), torch.mm(a16, b16)  # kernel creation, outside the timing
        fp32 = best_time(lambda: torch.mm(a, b), min_time=0.0)
        bf16 = best_time(lambda: torch.mm(a16, b16), min_time=0.0, give_up_after=GIVE_UP_FACTOR * fp32 / SCREEN_PASS)
    finally:
        torch.set_num_threads(threads)
    return fp32 / bf16


def linear_kernels(dtype: str) -> list[str]:
    """The linear kernels that work here for ``dtype``."""
    onednn = onednn_linear_available() if dtype == "fp32" else onednn_bf16_available()
    return ["onednn", "aten"] if onednn else ["aten"]


def measure_cpu_rates(shapes: ProbeShapes) -> CpuRates:
    """Time every working kernel of every dtype that passes the screen (see the module docstring)."""
    with torch.no_grad():
        screen = bf16_screen()
    flops = probe_flops(shapes)
    linear_rates = {"fp32": {k: linear_rate(shapes, "fp32", k) for k in linear_kernels("fp32")}}
    attention_rates = {"fp32": {k: attention_rate(shapes, "fp32", k) for k in kernels.ATTENTION_KERNELS}}
    if screen < SCREEN_PASS:
        return CpuRates(linear_rates, attention_rates, screen)
    # A first call GIVE_UP_FACTOR times slower than fp32's whole repetition ends the timing of that kernel.
    give_up = GIVE_UP_FACTOR * flops / max(linear_rates["fp32"].values())
    linear_rates["bf16"] = {k: linear_rate(shapes, "bf16", k, give_up) for k in linear_kernels("bf16")}
    attention_rates["bf16"] = {k: attention_rate(shapes, "bf16", k, give_up) for k in kernels.ATTENTION_KERNELS}
    return CpuRates(linear_rates, attention_rates)
