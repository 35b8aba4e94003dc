import pytest
import yaml

from openjepa.config import ConfigError, RunConfig, from_dict, load_config, recipe_names


def test_default_is_the_embedded_digits_recipe():
    cfg = load_config()
    assert cfg.data.dataset == "digits" and cfg.model.in_chans == 1


def test_dotted_overrides_are_typed():
    cfg = load_config("digits", ["optim.lr=5e-4", "data.crop_scale=[0.2, 1.0]", "optim.grad_clip=null",
                                 "model.pred_depth=3", "train.compile=true", "data.path=/data/x"])
    assert cfg.optim.lr == 5e-4 and cfg.data.crop_scale == (0.2, 1.0) and cfg.optim.grad_clip is None
    assert cfg.model.pred_depth == 3 and cfg.train.compile is True and cfg.data.path == "/data/x"


def test_unknown_key_names_it_and_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'.*did you mean 'optim.lr'"):
        load_config("digits", ["optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer'.*did you mean 'optim'"):
        from_dict({"optimizer": {"lr": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'mask.num_target'.*'mask.num_targets'"):
        load_config("digits", ["mask.num_target=3"])


@pytest.mark.parametrize("override, message", [
    ("optim.epochs=ten", "optim.epochs must be an integer"),
    ("train.compile=maybe", "train.compile must be true or false"),
    ("data.crop_scale=0.3", r"data.crop_scale must be a list"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("model.loss=l1", "model.loss must be one of"),
    ("data.dataset=imagenet", "data.dataset must be one of"),
    ("optim.lr", "must look like section.key=value"),
])
def test_wrong_values_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits", [override])


def test_unknown_recipe_suggests_names():
    with pytest.raises(ConfigError, match="did you mean fashion_mnist"):
        load_config("fashion_mnst")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("fashion_mnist", ["optim.lr=3e-4"])
    path = cfg.save(tmp_path / "config.yaml")
    again = load_config(str(path))
    assert again == cfg
    assert yaml.safe_load(path.read_text())["mask"]["target_scale"] == [0.15, 0.2]


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_validates(name):
    assert isinstance(load_config(name), RunConfig)


@pytest.mark.parametrize("name, arch, patch, img, pred_depth, batch, epochs, warmup", [
    ("in1k_vith14_ep300", "vit_huge", 14, 224, 12, 128, 300, 40),
    ("in1k_vith16-448_ep300", "vit_huge", 16, 448, 12, 16, 300, 40),
    ("in22k_vith14_ep66", "vit_huge", 14, 224, 12, 32, 66, 3),
    ("in22k_vitg16_ep44", "vit_giant", 16, 224, 16, 16, 44, 3),
])
def test_released_recipes_keep_the_published_hyperparameters(name, arch, patch, img, pred_depth, batch, epochs,
                                                             warmup):
    c = load_config(name)
    assert (c.model.arch, c.model.patch_size, c.model.img_size, c.model.pred_depth, c.model.pred_emb_dim) == (
        arch, patch, img, pred_depth, 384)
    assert (c.data.batch_size, c.data.crop_scale, c.data.hflip) == (batch, (0.3, 1.0), False)
    assert c.data.global_batch == 2048 and c.optim.accum_steps is None  # the published global batch, any GPU count
    o = c.optim
    assert (o.epochs, o.warmup_epochs, o.lr, o.start_lr, o.final_lr) == (epochs, warmup, 1e-3, 2e-4, 1e-6)
    assert (o.weight_decay, o.final_weight_decay, o.ema, o.ipe_scale) == (0.04, 0.4, (0.996, 1.0), 1.0)
    m = c.mask
    assert (m.num_targets, m.target_scale, m.target_aspect_ratio, m.context_scale, m.min_keep) == (
        4, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), 10)
    assert c.model.loss == "smooth_l1" and c.train.precision == "bf16"


def test_overrides_may_sit_on_both_sides_of_an_option(monkeypatch):
    from openjepa.cli import main as cli

    seen = {}
    monkeypatch.setattr("openjepa.cli.pretrain.run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["pretrain", "optim.lr=1e-3", "--resume", "runs/x", "optim.epochs=3"]) == 0
    assert seen["overrides"] == ["optim.lr=1e-3", "optim.epochs=3"] and seen["resume"] == "runs/x"
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--resume", "runs/x", "--bogus"])
