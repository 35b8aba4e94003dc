"""timm layout: key names, the create_model arguments, and an exact round trip (timm itself is not installed)."""

import json

import pytest
import torch

from openjepa.checkpoint import CheckpointError
from openjepa.cli.main import main
from openjepa.interop import ExportInfo, export_timm, from_timm_state_dict, load_timm, to_timm_state_dict
from openjepa.interop.timm import timm_name
from openjepa.models import PRESETS, VisionTransformer, vit_encoder


def timm_vit_keys(depth, qkv_bias=True):
    """The state-dict keys of timm's VisionTransformer with class_token=False, fc_norm=False, num_classes=0."""
    keys = ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
    for i in range(depth):
        for module in ["norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]:
            keys += [f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"]
        keys += [f"blocks.{i}.attn.qkv.weight"] + ([f"blocks.{i}.attn.qkv.bias"] if qkv_bias else [])
    return set(keys)


def test_state_dict_has_timm_keys_and_round_trips_exactly():
    enc = vit_encoder("vit_tiny", patch_size=8, img_size=32, depth=2)
    sd = to_timm_state_dict(enc)
    assert set(sd) == timm_vit_keys(2)
    assert sd["pos_embed"].shape == (1, 16, 192)  # no class-token row
    back = VisionTransformer(**enc.arch())
    back.load_state_dict(from_timm_state_dict(sd), strict=True)
    for key, value in enc.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_export_folder_round_trip_and_model_args(tmp_path):
    torch.manual_seed(0)
    enc = vit_encoder("vit_tiny", patch_size=4, img_size=16, depth=2).eval()
    export_timm(enc, tmp_path, info=ExportInfo(mean=[0.5] * 3, std=[0.25] * 3))
    config = json.loads((tmp_path / "config.json").read_text())
    args = config["model_args"]
    assert args["class_token"] is False and args["global_pool"] == "avg" and args["fc_norm"] is False
    assert args["num_classes"] == 0 and args["dynamic_img_size"] is True
    assert (args["embed_dim"], args["depth"], args["num_heads"], args["patch_size"], args["img_size"]) == (
        192, 2, 3, 4, 16)
    assert config["pretrained_cfg"]["mean"] == [0.5] * 3 and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    back = load_timm(tmp_path)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x), enc(x))


@pytest.mark.parametrize(
    ("preset", "patch", "size", "name"),
    [("vit_huge", 14, 224, "vit_huge_patch14_gap_224"), ("vit_huge", 16, 448, "vit_huge_patch16_gap_448"),
     ("vit_giant", 16, 224, "vit_giant_patch16_gap_224"), ("vit_small", 16, 224, "vit_base_patch16_gap_224")],
)
def test_timm_model_names_of_the_released_architectures(preset, patch, size, name):
    a = PRESETS[preset]
    arch = {"img_size": [size, size], "patch_size": patch, "embed_dim": a.embed_dim, "depth": a.depth,
            "num_heads": a.num_heads, "mlp_ratio": a.mlp_ratio}
    assert timm_name(arch) == name


def test_refuses_timm_models_of_another_structure():
    sd = to_timm_state_dict(vit_encoder("vit_tiny", patch_size=4, img_size=16, depth=1))
    with pytest.raises(CheckpointError, match="cls_token"):
        from_timm_state_dict({**sd, "cls_token": torch.zeros(1, 1, 192)})
    with pytest.raises(CheckpointError, match="fc_norm"):
        from_timm_state_dict({**sd, "fc_norm.weight": torch.ones(192)})
    assert "head.weight" not in from_timm_state_dict({**sd, "head.weight": torch.zeros(10, 192)})


def test_cli_export_timm_from_a_checkpoint(tmp_path, capsys):
    from openjepa import build_ijepa

    model = build_ijepa(arch="vit_tiny", patch_size=4, img_size=16, depth=1, pred_depth=1, pred_emb_dim=48)
    ckpt = tmp_path / "run.pth.tar"
    torch.save({"encoder": model.encoder.state_dict(), "predictor": model.predictor.state_dict(),
                "target_encoder": model.target_encoder.state_dict(),
                "config": {"model": {"arch": "vit_tiny", "patch_size": 4, "img_size": 16, "depth": 1,
                                     "pred_depth": 1, "pred_emb_dim": 48}, "data": {"dataset": "digits"}}}, ckpt)
    code = main(["export", "--checkpoint", str(ckpt), "--format", "timm", "--which", "context",
                 "--mean", "0.2", "0.2", "0.2", "--std", "0.3", "0.3", "0.3", "--out", str(tmp_path / "t")])
    assert code == 0 and "exported the context encoder" in capsys.readouterr().out
    back = load_timm(tmp_path / "t")
    for a, b in zip(model.encoder.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.2] * 3 and config["pretrained_cfg"]["license"] == "apache-2.0"
    assert config["openjepa"]["encoder"] == "context" and len(config["openjepa"]["training_config_sha256"]) == 64
