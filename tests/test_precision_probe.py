"""The CPU measurement behind train.precision=auto, run for real on tiny shapes (its results are not asserted:
they depend on the machine), and its way into a run's runtime, header and records."""

import time

import pytest
import torch

from openjepa import speed_probe
from openjepa.models import kernels
from openjepa.speed_probe import MAX_FLOPS_PER_REP, ProbeShapes, measure_cpu_rates, probe_flops, probe_shapes
from openjepa.precision import CpuRates

TINY = ProbeShapes(linear=((16, 8, 32), (16, 32, 8)), attention=((2, 2, 5, 4),))


@pytest.fixture(autouse=True)
def _default_kernels():
    yield
    kernels.reset_kernels()


def test_measurement_covers_every_working_kernel():
    rates = measure_cpu_rates(TINY)
    assert set(rates.linear["fp32"]) >= {"aten"} and set(rates.attention["fp32"]) == {"sdpa", "explicit"}
    if "bf16" in rates.linear:  # bf16 passed the screen: a CPU with native bf16
        assert rates.bf16_screen is None and set(rates.attention["bf16"]) == {"sdpa", "explicit"}
    else:  # emulated bf16: stopped at the screen, which says by how much
        assert 0 < rates.bf16_screen < 0.5
    for table in (rates.linear, rates.attention):
        assert all(r > 0 for by_kernel in table.values() for r in by_kernel.values())
    assert kernels.current_kernels() == {"linear": {"fp32": "onednn", "bf16": "onednn"},
                                         "attention": {"fp32": "sdpa", "bf16": "sdpa"}}  # restored afterwards


def test_shapes_are_scaled_to_the_budget():
    small = probe_shapes(192, 3, 4.0, 96, 3, batch=128, context_len=21, target_len=11)
    assert small.linear[0] == (small.attention[0][0] * 21, 192, 768) and probe_flops(small) <= MAX_FLOPS_PER_REP
    huge = probe_shapes(1280, 16, 4.0, 384, 12, batch=16, context_len=200, target_len=40)
    assert huge.attention[0][0] == 1  # never below one image
    assert small.signature() != huge.signature() and small.signature() == probe_shapes(
        192, 3, 4.0, 96, 3, batch=128, context_len=21, target_len=11).signature()


def test_run_header_and_records_say_what_auto_resolved_to(monkeypatch, tmp_path):
    from openjepa.config import load_config
    from openjepa.train import autoprecision, runtime

    measured = CpuRates({"fp32": {"onednn": 80e9, "aten": 100e9}, "bf16": {"onednn": 480e9, "aten": 300e9}},
                        {"fp32": {"sdpa": 1.0, "explicit": 2.0}, "bf16": {"sdpa": 1.0, "explicit": 3.0}})
    seen = []
    monkeypatch.setattr(autoprecision, "measure_cpu_rates", lambda shapes: seen.append(shapes) or measured)
    monkeypatch.setenv("OPENJEPA_CPU_PRECISION", "measure")
    monkeypatch.setenv("OPENJEPA_CACHE_DIR", str(tmp_path))
    config = load_config("digits", ["train.device=cpu"])
    rt = runtime.setup_runtime("cpu", "auto", autoprecision.run_probe_shapes(config), threads=1)
    assert seen and rt.autocast_dtype == torch.bfloat16 and not rt.use_grad_scaler
    assert rt.describe() == "cpu, bf16 autocast: 4.8x the fp32 matmul rate here"
    assert kernels.current_kernels() == {"linear": {"fp32": "aten", "bf16": "onednn"},
                                         "attention": {"fp32": "explicit", "bf16": "explicit"}}
    assert rt.precision_choice.record()["resolved"] == "bf16"
    assert rt.precision_note() == ("train.precision=auto resolved to bf16 here "
                                           "(cpu, bf16 autocast: 4.8x the fp32 matmul rate here)")
    again = runtime.setup_runtime("cpu", "auto", autoprecision.run_probe_shapes(config), threads=1)
    assert len(seen) == 1 and again.precision_choice.reason == rt.precision_choice.reason  # from the cache


def test_encoder_shapes_cover_every_patch_and_are_scaled():
    from openjepa.speed_probe import encoder_probe_shapes

    small = encoder_probe_shapes(192, 3, 4.0, batch=128, tokens=49)
    images = small.attention[0][0]
    assert small.linear == ((images * 49, 192, 768), (images * 49, 768, 192))  # no predictor shapes
    assert small.attention == ((images, 3, 49, 64),) and probe_flops(small) <= MAX_FLOPS_PER_REP
    assert encoder_probe_shapes(1280, 16, 4.0, batch=16, tokens=256).attention[0][0] == 1  # never below one image


@pytest.mark.parametrize("source", ["pretrained", "random", "broken"])
def test_fine_tuning_measures_its_own_encoder_for_auto(source, monkeypatch, tmp_path):
    """``openjepa finetune`` with ``train.precision=auto`` measures the encoder it trains (before: nothing, so
    fp32 on every CPU); settings that describe no encoder measure nothing and leave the error to the trainer."""
    from openjepa.finetune import load_finetune_config, trainer
    from openjepa.models import vit_encoder
    from openjepa.pretrained import PretrainedEncoder

    overrides = ["model.arch=vit_tiny", "model.embed_dim=16", "model.num_heads=2", "model.patch_size=4",
                 "model.img_size=16", "data.batch_size=8", f"train.out_dir={tmp_path}", "train.threads=1"]
    if source == "broken":
        overrides += ["model.num_heads=3"]  # 16 is not divisible by 3
    cfg = load_finetune_config("digits", overrides)
    pretrained = None
    if source == "pretrained":  # the encoder's own architecture wins over the recipe's model section
        pretrained = PretrainedEncoder(vit_encoder("vit_tiny", img_size=8, patch_size=2, embed_dim=24, depth=1,
                                                   num_heads=4, in_chans=1))
    seen = []

    def stop_here(device, precision, shapes=None, threads=None):
        seen.append((precision, shapes, threads))
        raise KeyboardInterrupt  # nothing after the runtime matters here

    monkeypatch.setattr(trainer, "setup_runtime", stop_here)
    with pytest.raises(KeyboardInterrupt):
        trainer.finetune(cfg, pretrained)
    (precision, shapes, threads), = seen
    assert precision == cfg.train.precision == "auto" and threads == 1
    if source == "broken":
        assert shapes is None
    else:
        dim, heads, tokens = (24, 4, 16) if source == "pretrained" else (16, 2, 16)
        assert shapes.linear[0][1:] == (dim, 4 * dim) and shapes.attention[0][1:] == (heads, tokens, dim // heads)


def test_screen_does_not_count_the_first_bf16_call(monkeypatch):
    """oneDNN builds its bf16 kernel on the first call (milliseconds on an AMX CPU): the screen must time the
    arithmetic, not that. Here bf16 costs what fp32 does, except for a slow first call."""
    real_mm, calls = torch.mm, {"bf16": 0}

    def mm(a, b):
        if a.dtype == torch.bfloat16:
            calls["bf16"] += 1
            if calls["bf16"] == 1:
                time.sleep(0.05)  # about 1,000x a 256-wide fp32 product
            return real_mm(a.float(), b.float()).bfloat16()
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    assert speed_probe.bf16_screen() > speed_probe.SCREEN_PASS
