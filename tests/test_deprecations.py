"""Names that moved keep working from their old places, with a DeprecationWarning naming the new one."""

import importlib
import sys

import pytest
import torch

import openjepa
from openjepa import arch_from_weights, checkpoint, config_sections, seeding
from openjepa.data.collate import MaskCollator

MOVED_MODULES = {  # old module: (a name it still gives, where that name lives now)
    "openjepa.data.config": ("DataConfig", config_sections.DataConfig),
    "openjepa.eval.config": ("EvalConfig", config_sections.EvalConfig),
    "openjepa.train.config": ("TrainConfig", config_sections.TrainConfig),
    "openjepa.interop.architecture": ("encoder_arch", arch_from_weights.encoder_arch),
    "openjepa.interop.weights": ("load_strict", checkpoint.load_strict),
}


@pytest.mark.parametrize("old", list(MOVED_MODULES))
def test_old_modules_warn_and_still_give_their_names(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=old):
        module = importlib.import_module(old)
    name, now = MOVED_MODULES[old]
    assert getattr(module, name) is now


def test_moved_mask_helpers():
    import openjepa.masks as masks

    with pytest.warns(DeprecationWarning, match="openjepa.seeding"):
        assert masks.seeded_generator is seeding.seeded_generator
    with pytest.raises(AttributeError, match="openjepa.data.collate"):
        masks.MaskCollator  # noqa: B018 - the attribute access is the test
    assert openjepa.MaskCollator is MaskCollator  # the top-level name stays


def test_old_strict_loader_and_loss_reducer_warn():
    from openjepa.checkpoint import load_weights
    from openjepa.step import make_optimizer, train_step

    model = openjepa.build_ijepa(arch="vit_tiny", patch_size=4, img_size=16, depth=1, pred_depth=1, pred_emb_dim=48)
    with pytest.warns(DeprecationWarning, match="load_strict"):
        load_weights(model.encoder, model.encoder.state_dict(), "context encoder")
    masks = openjepa.MultiBlockMaskSampler((4, 4), min_keep=2).sample(2, torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="exchange"):
        train_step(model, make_optimizer(model), torch.randn(2, 3, 16, 16), masks.context, masks.targets, 1e-3,
                   0.04, 0.99, reduce_loss=lambda t: t)
