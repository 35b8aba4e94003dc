"""Hugging Face transformers: exported folders load offline in IJepaModel with the same outputs, and come back."""

import functools
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa import build_ijepa
from openjepa.checkpoint import CheckpointError
from openjepa.cli.main import main
from openjepa.interop import (
    ExportInfo,
    export_hf,
    from_hf_state_dict,
    installed_layout,
    load_exported,
    load_hf,
    read_export_info,
    read_hf_info,
    to_hf_state_dict,
)
from openjepa.models import vit_encoder

STATS = ExportInfo(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], dataset="digits")


@functools.lru_cache(maxsize=None)  # built once per shape: the tests only read it
def random_encoder(**kw):
    """A small encoder with non-trivial weights everywhere (LayerNorms and biases included)."""
    torch.manual_seed(0)
    enc = vit_encoder("vit_tiny", **{"patch_size": 8, "img_size": 32, "depth": 2, **kw}).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc


def hf_model(directory):
    import transformers  # a test dependency: a missing install must fail, not skip

    model, loading = transformers.IJepaModel.from_pretrained(directory, local_files_only=True,
                                                             output_loading_info=True)
    return model.eval(), loading


def test_from_pretrained_offline_matches_our_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = random_encoder()
    export_hf(enc, tmp_path, info=STATS)
    model, loading = hf_model(tmp_path)
    assert loading == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(),
                       "error_msgs": []}
    assert model.config.layer_norm_eps == 1e-6 and model.config.image_size == 32
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (model(pixel_values=x).last_hidden_state - enc(x)).abs().max().item()
    assert diff < 1e-5


def test_image_processor_uses_the_training_normalisation(tmp_path):
    import transformers

    export_hf(random_encoder(), tmp_path, info=STATS)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    image = Image.fromarray(np.full((50, 70, 3), 255, dtype=np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    expected = (1.0 - torch.tensor(STATS.mean)) / torch.tensor(STATS.std)
    assert torch.allclose(pixels[0, :, 5, 5], expected, atol=1e-4)
    assert "license: apache-2.0" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_round_trip_is_exact_in_both_layouts(tmp_path, layout):
    enc = random_encoder(img_size=(32, 48))
    export_hf(enc, tmp_path, info=STATS, layout=layout)
    back = load_hf(tmp_path)
    assert back.arch() == enc.arch() and back.norm.eps == 1e-6
    for (k, a), (_, b) in zip(enc.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    info = read_hf_info(tmp_path)
    assert (info.mean, info.std, info.license) == (STATS.mean, STATS.std, "Apache-2.0")


def test_layouts_name_the_installed_version_keys():
    import transformers

    sd = to_hf_state_dict(random_encoder(), installed_layout())
    hf = transformers.IJepaModel(transformers.IJepaConfig(
        hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768, image_size=32,
        patch_size=8))
    assert set(sd) == set(hf.state_dict())
    v4 = to_hf_state_dict(random_encoder(), "v4")
    assert "encoder.layer.1.attention.attention.query.weight" in v4
    assert "encoder.layer.0.intermediate.dense.bias" in v4 and "encoder.layer.0.output.dense.weight" in v4
    assert from_hf_state_dict(v4).keys() == from_hf_state_dict(sd).keys() == random_encoder().state_dict().keys()


def test_v4_layout_also_loads_in_the_installed_transformers(tmp_path):
    enc = random_encoder()
    export_hf(enc, tmp_path, info=STATS, layout="v4")
    model, loading = hf_model(tmp_path)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(pixel_values=x).last_hidden_state - enc(x)).abs().max().item() < 1e-5


def test_reads_a_folder_written_by_transformers_itself(tmp_path):
    import transformers

    torch.manual_seed(1)
    config = transformers.IJepaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=256, image_size=32, patch_size=8, num_channels=1)
    hf = transformers.IJepaModel(config).eval()
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.norm.eps == config.layer_norm_eps  # transformers' default (1e-12) is kept, not ours
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert (ours(x) - hf(pixel_values=x).last_hidden_state).abs().max().item() < 1e-5


def test_a_checkpoint_to_hf_to_openjepa(tmp_path):
    model = build_ijepa(arch="vit_tiny", patch_size=4, img_size=16, depth=2, pred_depth=1, pred_emb_dim=48)
    config = {"model": {"arch": "vit_tiny", "patch_size": 4, "img_size": 16, "depth": 2, "pred_depth": 1,
                        "pred_emb_dim": 48}, "data": {"dataset": "folder", "mean": [0.1, 0.2, 0.3],
                                                      "std": [0.3, 0.2, 0.1]}}
    ckpt = tmp_path / "ckpt.pth.tar"
    torch.save({"encoder": model.encoder.state_dict(), "predictor": model.predictor.state_dict(),
                "target_encoder": model.target_encoder.state_dict(), "config": config, "epoch": 1}, ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.1, 0.2, 0.3] and processor["size"] == {"height": 16, "width": 16}
    assert main(["convert", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "native")]) == 0
    back = load_exported(tmp_path / "native")
    for a, b in zip(model.target_encoder.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    info = read_export_info(tmp_path / "native")
    assert info.mean == [0.1, 0.2, 0.3] and info.license == "Apache-2.0" and info.source == "huggingface"


def test_unknown_normalisation_writes_no_preprocessor(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_hf(random_encoder(), tmp_path)
    assert any("normalisation" in str(w.message) for w in caught)
    assert not (tmp_path / "preprocessor_config.json").exists()


def test_refuses_a_folder_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="'vit' model, not an I-JEPA one"):
        load_hf(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_hf(tmp_path / "config.json")
