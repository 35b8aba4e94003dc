"""Fine-tuned classifiers leave openjepa with their logits: transformers' IJepaForImageClassification, timm's ViT
with its head (timm is not installed: its key layout and structure are checked), `openjepa predict`; and every
kind of pretrained source loads for fine-tuning."""

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.checkpoint import save_checkpoint
from openjepa.cli.main import main
from openjepa.finetune import BEST, ClassifierInfo, read_classifier
from openjepa.finetune.checkpoints import classifier_record
from openjepa.interop import (
    ExportInfo,
    export_hf,
    export_hf_classifier,
    export_openjepa,
    export_timm,
    export_timm_classifier,
    load_hf_classifier,
    load_pretrained,
    load_timm_classifier,
)
from openjepa.models import ViTClassifier, vit_encoder

CLASSES = ["cat", "dog", "emu", "fox", "gnu", "hen", "owl"]


def classifier(in_chans=3):
    """A small classifier with non-trivial weights everywhere (LayerNorms, biases and head included)."""
    torch.manual_seed(0)
    model = ViTClassifier(vit_encoder("vit_tiny", patch_size=8, img_size=32, in_chans=in_chans, depth=2), 7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    info = ClassifierInfo(CLASSES, [0.5] * in_chans, [0.25] * in_chans, "Apache-2.0", "openjepa", "runs/x", "mine")
    return model.eval(), info


def test_hugging_face_classifier_gives_the_same_logits(tmp_path, monkeypatch):
    import transformers  # a test dependency: a missing install must fail, not skip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, info = classifier()
    export_hf_classifier((model, info), tmp_path)
    hf, loading = transformers.IJepaForImageClassification.from_pretrained(tmp_path, local_files_only=True,
                                                                           output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    assert hf.config.id2label[4] == "gnu" and hf.config.num_labels == 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (hf.eval()(pixel_values=x).logits - model(x)).abs().max().item() < 1e-5
        assert torch.equal(load_hf_classifier(tmp_path)(x), model(x))
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] * 3 and "license: apache-2.0" in (tmp_path / "README.md").read_text()


def timm_classifier_keys(depth):
    """timm's VisionTransformer(class_token=False, global_pool='avg', fc_norm=False, num_classes=C) state dict."""
    keys = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "head.weight", "head.bias"}
    for i in range(depth):
        for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"}
    return keys


def test_timm_classifier_layout_and_logits(tmp_path):
    from safetensors.torch import load_file

    model, info = classifier()
    export_timm_classifier((model, info), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert set(weights) == timm_classifier_keys(2) and weights["head.weight"].shape == (7, 192)
    config = json.loads((tmp_path / "config.json").read_text())
    args = config["model_args"]
    assert (args["num_classes"], args["class_token"], args["global_pool"], args["fc_norm"]) == (7, False, "avg", False)
    assert config["pretrained_cfg"]["label_names"] == CLASSES and config["num_classes"] == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # timm's forward for these arguments: final norm on every token, mean, head
        tokens = model.encoder(x)
        assert torch.equal(tokens.mean(1) @ weights["head.weight"].T + weights["head.bias"], model(x))
        assert torch.equal(load_timm_classifier(tmp_path)(x), model(x))


def test_cli_export_and_predict_from_a_fine_tuning_run(tmp_path, capsys):
    model, info = classifier(in_chans=1)
    run = tmp_path / "run"
    save_checkpoint(classifier_record(model, info), run / BEST)
    assert main(["export", "--checkpoint", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "exported the fine-tuned classifier (7 classes" in capsys.readouterr().out
    assert torch.equal(load_hf_classifier(tmp_path / "hf").head.weight, model.head.weight)
    assert main(["export", "--checkpoint", str(run / BEST), "--format", "timm", "--out", str(tmp_path / "t")]) == 0
    assert main(["export", "--checkpoint", str(run), "--which", "context", "--out", str(tmp_path / "x")]) == 1
    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_text("not an image")
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--images", str(tmp_path / "images"), "--out",
                 str(tmp_path / "p.csv"), "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "predicted 3 images (7 classes)" in captured.out and "broken.png" in captured.err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["path"] for r in rows] == [f"nested/{i}.png" for i in range(3)]
    first = Image.open(images / "0.png").convert("L").resize((32, 32), Image.BICUBIC)
    x = (torch.from_numpy(np.asarray(first, dtype=np.float32) / 255)[None, None] - 0.5) / 0.25
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    assert rows[0]["class"] == CLASSES[int(probs.argmax())] and rows[0]["class_2"] in CLASSES
    assert float(rows[0]["probability"]) == pytest.approx(float(probs.max()), abs=2e-3)


def test_every_kind_of_pretrained_source_loads(tmp_path):
    from openjepa import build_ijepa

    ijepa = build_ijepa(arch="vit_tiny", patch_size=8, img_size=32, depth=1, pred_depth=1, pred_emb_dim=48)
    stats = ExportInfo(mean=[0.1] * 3, std=[0.2] * 3, dataset="mine")
    ckpt = tmp_path / "ckpt.pth.tar"
    torch.save({"encoder": ijepa.encoder.state_dict(), "predictor": ijepa.predictor.state_dict(),
                "target_encoder": ijepa.target_encoder.state_dict(), "normalization": {"mean": [0.1] * 3,
                                                                                     "std": [0.2] * 3},
                "config": {"model": {"arch": "vit_tiny", "patch_size": 8, "img_size": 32, "depth": 1,
                                     "pred_depth": 1, "pred_emb_dim": 48}, "data": {"dataset": "cifar10"}}}, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_hf(ijepa.target_encoder, tmp_path / "hf", info=stats)
        export_openjepa(ijepa.target_encoder, tmp_path / "native", info=stats)
        export_timm(ijepa.target_encoder, tmp_path / "timm", info=stats)
    model, info = classifier()
    save_checkpoint(classifier_record(model, info), tmp_path / "ft" / BEST)
    expected = ijepa.target_encoder.state_dict()
    for source in (ckpt, tmp_path / "hf", tmp_path / "native", tmp_path / "timm"):
        loaded = load_pretrained(source)
        assert loaded.mean == pytest.approx([0.1] * 3) and loaded.std == pytest.approx([0.2] * 3), source
        for key, value in expected.items():
            assert torch.allclose(loaded.encoder.state_dict()[key], value), (source, key)
    assert load_pretrained(ckpt).data["dataset"] == "cifar10"
    assert torch.equal(load_pretrained(ckpt, "context").encoder.blocks[0].attn.qkv.weight,
                       ijepa.encoder.blocks[0].attn.qkv.weight)
    from_classifier = load_pretrained(tmp_path / "ft")
    assert torch.equal(from_classifier.encoder.norm.weight, model.encoder.norm.weight) and from_classifier.mean == [.5] * 3
    assert read_classifier(tmp_path / "ft")[1].classes == CLASSES
    with pytest.raises(Exception, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
