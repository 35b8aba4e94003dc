"""Loading never runs code from a file, and every bad file gets a clear error instead of a traceback."""

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch

import openjepa
from openjepa import build_ijepa, load_official
from openjepa.checkpoint import CheckpointError, load_checkpoint
from openjepa.cli.main import main
from openjepa.interop import export_openjepa, load_exported, load_hf, load_official_encoder
from openjepa.models import vit_encoder
from openjepa.step import make_optimizer

TINY = dict(arch="vit_tiny", patch_size=4, img_size=16, depth=1, pred_depth=1, pred_emb_dim=48)


class Payload:
    """Unpickling this creates ``marker``: the observable effect of code run by a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """A checkpoint in the released layout with a payload hidden inside a state dict, and its marker path."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth.tar"
    torch.save({"encoder": {"module.pos_embed": Payload(marker)}, "epoch": 1}, path)
    return path, marker


def test_the_payload_is_real(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


@pytest.mark.parametrize("loader", [load_checkpoint, load_official, load_official_encoder])
def test_malicious_pickle_is_refused_without_running(evil, loader):
    path, marker = evil
    with pytest.raises(CheckpointError, match=r"refusing to load .*io\.open.*nothing in the file was run"):
        loader(path)
    assert not marker.exists()


def test_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"encoder": Payload(marker)}))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_official(path)
    assert not marker.exists()


def test_training_checkpoint_loader_refuses_it(evil):
    from openjepa.train.checkpoints import restore_training_state

    path, marker = evil
    model = build_ijepa(**TINY)
    with pytest.raises(CheckpointError, match="refusing to load"):
        restore_training_state(path, model, make_optimizer(model), None, steps_per_epoch=1)
    assert not marker.exists()


def test_hf_folder_with_pickled_weights_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ijepa", "hidden_size": 192,
                                                      "num_hidden_layers": 1, "num_attention_heads": 3}))
    torch.save({"layernorm.weight": Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_hf(tmp_path)
    assert not marker.exists()


def one_paragraph_error(capsys, argv, command):
    assert main(argv) != 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert err.startswith(f"openjepa {command}: error:") and "\n" not in err
    return err


@pytest.mark.parametrize("command", ["convert", "export"])
def test_cli_refuses_it_in_one_paragraph(evil, capsys, tmp_path, command):
    path, marker = evil
    argv = (["convert", "official", str(path), "--out", str(tmp_path / "o")] if command == "convert"
            else ["export", "--checkpoint", str(path), "--out", str(tmp_path / "o")])
    assert "refusing to load" in one_paragraph_error(capsys, argv, command)
    assert not marker.exists()


def test_truncated_text_empty_and_folder(tmp_path, capsys):
    good = tmp_path / "good.pth.tar"
    torch.save({"encoder": {"pos_embed": torch.zeros(1, 4, 8)}}, good)
    (tmp_path / "truncated.pth.tar").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "notes.pth.tar").write_text("epoch 10, loss 0.3\n")
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_official(tmp_path / "truncated.pth.tar")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: it is a text file"):
        load_official(tmp_path / "notes.pth.tar")
    with pytest.raises(CheckpointError, match="empty"):
        load_official(tmp_path / "empty.pth.tar")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official(tmp_path / "missing.pth.tar")
    err = one_paragraph_error(capsys, ["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")],
                              "export")
    assert "is a folder" in err


def test_state_dict_of_another_model(tmp_path, capsys):
    resnet_like = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}
    torch.save(resnet_like, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not an I-JEPA checkpoint: it has no 'encoder'"):
        load_official(tmp_path / "resnet.pth")
    torch.save({"encoder": resnet_like, "target_encoder": resnet_like}, tmp_path / "wrapped.pth")
    err = one_paragraph_error(capsys, ["convert", "official", str(tmp_path / "wrapped.pth"), "--out",
                                       str(tmp_path / "o")], "convert")
    assert "not an I-JEPA encoder: pos_embed" in err


def test_wrong_shapes_name_keys_shapes_and_architecture(tmp_path):
    export_openjepa(vit_encoder("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=96), tmp_path,
                    info=openjepa.interop.ExportInfo(mean=[0.5] * 3, std=[0.5] * 3))
    config = json.loads((tmp_path / "config.json").read_text())
    config["architecture"]["embed_dim"] = 192  # the description no longer matches the weights
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as caught:
        load_exported(tmp_path)
    message = str(caught.value)
    assert "pos_embed expected (1, 16, 192), found (1, 16, 96)" in message
    assert "(+" in message  # only the first few mismatches are listed
    assert "'embed_dim': 192" in message


def test_mismatched_networks_in_one_checkpoint(tmp_path):
    model = build_ijepa(**TINY)
    deeper = vit_encoder("vit_tiny", patch_size=4, img_size=16, depth=2)
    torch.save({"encoder": model.encoder.state_dict(), "target_encoder": deeper.state_dict(),
                "predictor": model.predictor.state_dict()}, tmp_path / "mixed.pth.tar")
    with pytest.raises(CheckpointError, match="target encoder weights .* unexpected: blocks.1"):
        load_official(tmp_path / "mixed.pth.tar")


# -- no unsafe deserialisation anywhere in the library ---------------------------------------------------------------
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load",
                "cloudpickle.load", "cloudpickle.loads", "marshal.load", "marshal.loads", "shelve.open",
                "yaml.unsafe_load", "torch.jit.load"}


def _name(node):
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else None
    return node.id if isinstance(node, ast.Name) else None


def _keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(source: str) -> list[str]:
    """Calls that can unpickle arbitrary objects. A ``pickle.Unpickler`` subclass is allowed only when it
    restricts ``find_class``; ``torch.load`` needs ``weights_only=True``; ``np.load`` must not allow pickles."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(_name(b) == "pickle.Unpickler" for b in node.bases):
            if not any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body):
                found.append(f"line {node.lineno}: Unpickler subclass without find_class")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        weights_only = _keyword(node, "weights_only")
        if name == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif name in UNSAFE_CALLS:
            found.append(f"line {node.lineno}: {name}")
        elif name in ("np.load", "numpy.load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"line {node.lineno}: np.load allowing pickles")
        elif name == "yaml.load":
            loader = _name(_keyword(node, "Loader")) if _keyword(node, "Loader") is not None else None
            if loader not in ("yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"):
                found.append(f"line {node.lineno}: yaml.load without a safe loader")
    return found


def test_the_scanner_catches_unsafe_loading():
    bad = ("import torch, pickle, yaml\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n"
           "yaml.load(s, Loader=yaml.Loader)\nclass U(pickle.Unpickler):\n    pass\n")
    assert len(unsafe_uses(bad)) == 5
    good = ("import torch, pickle\ntorch.load(p, weights_only=True)\n"
            "class U(pickle.Unpickler):\n    def find_class(self, m, n):\n        raise KeyError\n")
    assert unsafe_uses(good) == []


def test_no_unsafe_deserialisation_in_src():
    package = Path(openjepa.__file__).parent
    problems = {str(p.relative_to(package)): unsafe_uses(p.read_text()) for p in sorted(package.rglob("*.py"))}
    assert {k: v for k, v in problems.items() if v} == {}
