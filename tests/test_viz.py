import csv
import gzip
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.checkpoint import add_prefix, save_checkpoint
from openjepa.cli.main import main
from openjepa.config import load_config
from openjepa.data import build_pretrain_loader
from openjepa.ijepa import build_ijepa
from openjepa.masks import BlockMasks
from openjepa.train.run_log import RunLog
from openjepa.viz.chart import format_ticks, nice_ticks
from openjepa.viz.draw import PALETTE
from openjepa.viz.features import feature_picture_layout, patch_pca, positional_share
from openjepa.viz.masks import mask_picture_layout, overlay_masks, render_masks, target_colour, training_masks
from openjepa.viz.predictions import build_bank, predict_and_retrieve, prediction_picture_size
from openjepa.viz.run import read_run, render_run, run_panels, run_picture_size, save_run_plot

TINY_MODEL = ["model.embed_dim=48", "model.num_heads=2", "model.depth=1", "model.pred_depth=1",
              "model.pred_emb_dim=32", "data.batch_size=16"]


def assert_picture(path, size):
    """A PNG of the expected pixel size that is not blank: spread-out pixel values and many colours."""
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.size == size
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 30


# -- fixtures -------------------------------------------------------------------------------------------------------
def write_run(run_dir, steps=120, monitor=True, extra_monitor=()):
    """A run folder written through the trainer's own logger."""
    run_dir.mkdir(parents=True)
    log = RunLog(run_dir, None, tensorboard=False)
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        t = step / steps
        log.step({"step": step, "epoch": 1 + step * 4 // steps, "loss": 0.5 * np.exp(-3 * t) + 0.02 * rng.random(),
                  "lr": 1e-3 * min(1.0, 5 * t), "wd": 0.04 + 0.36 * t, "momentum": 0.996 + 0.004 * t,
                  "context_len": int(rng.integers(10, 20)), "target_len": 9, "step_ms": 40 + rng.random(),
                  "data_ms": 2.0, "images_per_s": 3000 + 100 * rng.random()})
        if monitor and step % 30 == 0:
            log.monitored({"step": step, "epoch": step * 4 // steps, "knn_top1": 40 + step / 4,
                           "linear_top1": 45 + step / 4, "rankme": 10 + step / 20, "feature_std": 0.1,
                           **{name: float(step) for name in extra_monitor}})
    log.close()
    return run_dir


@pytest.fixture
def tiny_checkpoint(tmp_path):
    config = load_config("digits", TINY_MODEL)
    model = build_ijepa(config.model)
    state = {"encoder": add_prefix(model.encoder.state_dict()),
             "predictor": add_prefix(model.predictor.state_dict()),
             "target_encoder": add_prefix(model.target_encoder.state_dict()),
             "epoch": 1, "config": config.to_dict()}
    return save_checkpoint(state, tmp_path / "run" / "jepa-latest.pth.tar")


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    """IDX files in Fashion-MNIST's layout: 28x28 grey images of bright rectangles, labels 0..9."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for prefix, count in (("train", 64), ("t10k", 48)):
        images = np.zeros((count, 28, 28), np.uint8)
        for img in images:
            top, left = rng.integers(0, 14, 2)
            img[top:top + 12, left:left + 10] = rng.integers(120, 255)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", count, 28, 28) + images.tobytes()))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", count) + labels.tobytes()))
    return root


# -- charts and the run picture -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi", [(0, 1), (0.996, 1.0), (1e-6, 1e-3), (3, 12345), (-0.1, 2.3), (2e-5, 9e-5),
                                    (4.3583e-4, 4.3597e-4)])
def test_nice_ticks_are_few_round_values_inside_the_range(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert 3 <= len(ticks) <= 6
    assert lo - 1e-12 <= ticks[0] and ticks[-1] <= hi + 1e-12
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    labels = format_ticks(ticks)
    assert len(set(labels)) == len(labels)  # the format keeps neighbouring ticks apart


def test_format_ticks_uses_suffixes_and_enough_decimals():
    assert format_ticks([0, 5000, 10000]) == ["0", "5k", "10k"]
    assert format_ticks([0.0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert format_ticks([2e-5, 4e-5]) == ["2e-5", "4e-5"]
    assert format_ticks([4.3585e-4, 4.359e-4]) == ["4.3585e-4", "4.3590e-4"]  # as many digits as the step needs


def test_run_picture_has_every_panel_and_needs_no_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib now fails
    run_dir = write_run(tmp_path / "run")
    titles = [panel.title for panel in run_panels(read_run(run_dir))]
    assert titles[:4] == ["training loss", "learning rate", "weight decay", "EMA momentum of the target encoder"]
    assert {"probe accuracy", "effective rank (RankMe)", "feature std"} <= set(titles)
    assert len(titles) == 10
    out = save_run_plot(run_dir)
    assert out == run_dir / "curves.png"
    assert run_picture_size(10) == (1224, 1070)  # 3 columns of 400px panels, 4 rows of 250px under the header
    assert_picture(out, (1224, 1070))


def test_run_picture_shows_whatever_the_monitor_logged(tmp_path):
    run_dir = write_run(tmp_path / "run", extra_monitor=("probe_loss",))
    titles = [panel.title for panel in run_panels(read_run(run_dir))]
    assert "probe_loss" in titles
    without = write_run(tmp_path / "plain", monitor=False)
    titles = [panel.title for panel in run_panels(read_run(without))]
    assert "probe accuracy" not in titles and len(titles) == 7
    assert render_run(without).size == run_picture_size(7)


def test_save_run_plot_skips_runs_with_nothing_to_draw(tmp_path):
    assert save_run_plot(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert save_run_plot(tmp_path / "empty") is None
    header_only = tmp_path / "header"
    header_only.mkdir()
    (header_only / "metrics.csv").write_text("step,epoch,loss\n")
    assert save_run_plot(header_only) is None
    assert not list(tmp_path.rglob("*.png"))


def test_save_run_plot_warns_instead_of_stopping_training(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=10)
    (tmp_path / "taken.png").mkdir()  # the output path is a folder: writing must fail
    with pytest.warns(RuntimeWarning, match="could not draw"):
        assert save_run_plot(run_dir, tmp_path / "taken.png") is None


def test_run_picture_tolerates_damaged_cells(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=40)
    with (run_dir / "metrics.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["41", "2", "nan", "", "oops"])  # a half-written last line
    assert_picture(save_run_plot(run_dir), run_picture_size(10))


# -- masks ------------------------------------------------------------------------------------------------------------
def test_mask_picture_masks_are_those_of_the_training_loader():
    config = load_config("digits", TINY_MODEL)
    loader = build_pretrain_loader(config.data, config.model, config.mask, config.train.seed)
    loader.set_epoch(1, 2)
    batch = next(iter(loader.loader))
    masks = training_masks(config, 5, epoch=1, step=2)
    assert torch.equal(masks.context, batch.context[:5])
    assert torch.equal(masks.targets, batch.targets[:, :5])


def test_mask_overlay_draws_each_patch_where_the_masks_put_it():
    white = np.full((8, 8, 3), 255, np.uint8)  # a 4x4 grid of 2px patches, enlarged 5 times: 10px per patch
    context = torch.tensor([0, 1, 4])
    targets = torch.tensor([[10, 11, 14, 15], [2, 3, 6, 7]])  # two 2x2 blocks
    tile = np.asarray(overlay_masks(white, context, targets, 2, 5, (4, 4)))

    def centre(patch):
        r, c = divmod(patch, 4)
        return tile[r * 10 + 5, c * 10 + 5].astype(int)

    assert centre(0)[2] > centre(0)[0] + 30  # context: tinted blue
    assert (abs(centre(8) - 200) < 25).all()  # neither: washed out grey
    assert centre(10)[0] > centre(10)[2] + 30  # target 1 (vermillion) fill
    assert tuple(tile[20, 20]) == target_colour(0)  # the outline of block 1 at its top-left corner
    assert tuple(tile[0, 39]) == target_colour(1)  # and of block 2 at its top-right corner


def test_masks_command_on_the_embedded_digits(tmp_path, capsys):
    out = tmp_path / "masks.png"
    assert main(["viz", "masks", *TINY_MODEL, "--count", "4", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert mask_picture_layout(4, 16).size == (694, 312)  # 4 tiles of 16px x 10, gaps, header, captions
    assert_picture(out, (694, 312))


def test_masks_command_on_fashion_mnist_files(tmp_path, fake_fashion_mnist):
    out = tmp_path / "masks.png"
    args = ["viz", "masks", "-c", "fashion_mnist", *TINY_MODEL, "--data-path", str(fake_fashion_mnist),
            "--count", "6", "--columns", "3", "--plain", "--out", str(out)]
    assert main(args) == 0
    assert_picture(out, mask_picture_layout(6, 28, 3).size)


# -- features ---------------------------------------------------------------------------------------------------------
def test_patch_pca_colours_two_kinds_of_patches_apart():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    kinds = torch.zeros(3, 4, 4, dtype=torch.bool)
    kinds[:, :2] = True  # top half of every image is of kind a
    features = torch.where(kinds[..., None], a, b) + 0.05 * torch.randn(3, 4, 4, 64, generator=g)
    pca = patch_pca(features)
    assert pca.rgb.shape == (3, 4, 4, 3) and pca.rgb.min() >= 0 and pca.rgb.max() <= 1
    assert pca.explained[0] > 0.9
    first = pca.rgb[..., 0]
    assert abs(first[:, :2].mean() - first[:, 2:].mean()) > 0.8
    assert np.array_equal(patch_pca(-features).rgb, pca.rgb)  # colours do not depend on the sign PCA returns
    assert pca.positional > 0.95  # every image has the same kind at the same place


def test_positional_share_tells_position_from_content():
    g = torch.Generator().manual_seed(0)
    by_position = torch.randn(1, 4, 4, 32, generator=g).expand(10, 4, 4, 32)
    by_content = torch.randn(10, 4, 4, 32, generator=g)
    assert positional_share(by_position + 0.01 * by_content) > 0.99
    assert positional_share(by_content) < 0.2  # only chance agreement between 10 images


def test_features_command_on_digits_and_fashion_mnist(tmp_path, tiny_checkpoint, fake_fashion_mnist):
    out = tmp_path / "pca.png"
    assert main(["viz", "features", "--checkpoint", str(tiny_checkpoint.parent), "--count", "4",
                 "--out", str(out)]) == 0
    assert_picture(out, feature_picture_layout(4, 16).size)
    out = tmp_path / "pca_fmnist.png"
    assert main(["viz", "features", "--checkpoint", str(tiny_checkpoint), "--data", "fashion_mnist", "--data-path",
                 str(fake_fashion_mnist), "--which", "context", "--count", "3", "--out", str(out)]) == 0
    assert_picture(out, feature_picture_layout(3, 16).size)  # the model's 16px input size, whatever the data


# -- predictions ------------------------------------------------------------------------------------------------------
def test_true_targets_retrieve_their_own_patch_from_a_bank_that_holds_it():
    config = load_config("digits", TINY_MODEL)
    model = build_ijepa(config.model).eval()
    images = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6) % 3
    bank = build_bank(model, images, labels, np.zeros((6, 16, 16, 3), np.uint8))
    masks = training_masks(config, 6)
    results, summary = predict_and_retrieve(model, images, labels, masks, bank, k=3)
    assert len(results) == 6 and summary.patches == masks.targets.numel()
    for res in results:
        assert bank.locate(res.true[0][0]) == (res.image, res.patch)
        assert res.true[0][1] == pytest.approx(1.0, abs=1e-4)
        assert res.patch in masks.targets[0, res.image].tolist()
    assert summary.true_label_agreement > summary.chance_label_agreement
    assert summary.chance_label_agreement == pytest.approx(1 / 3)


def test_predictions_command_on_digits_and_fashion_mnist(tmp_path, tiny_checkpoint, fake_fashion_mnist):
    out = tmp_path / "predictions.png"
    assert main(["viz", "predictions", "--checkpoint", str(tiny_checkpoint), "--queries", "3", "--bank", "40",
                 "-k", "4", "--out", str(out)]) == 0
    assert_picture(out, prediction_picture_size(3, 4, 16))
    out = tmp_path / "predictions_fmnist.png"
    assert main(["viz", "predictions", "--checkpoint", str(tiny_checkpoint), "--data", "fashion_mnist",
                 "--data-path", str(fake_fashion_mnist), "--queries", "2", "--bank", "20", "--out", str(out)]) == 0
    assert_picture(out, prediction_picture_size(2, 5, 16))


def test_run_command(tmp_path):
    run_dir = write_run(tmp_path / "run")
    assert main(["viz", "run", str(run_dir), "--out", str(tmp_path / "run.png")]) == 0
    assert_picture(tmp_path / "run.png", run_picture_size(10))


# -- errors -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["viz", "run", "{tmp}/nowhere"], "does not exist"),
    (["viz", "run", "{tmp}"], "holds no metrics.csv"),
    (["viz", "run", "{tmp}/header"], "no logged step"),
    (["viz", "features", "--checkpoint", "{tmp}/garbage.pth.tar"], "garbage.pth.tar is not"),
    (["viz", "predictions", "--checkpoint", "{tmp}/nowhere.pth.tar"], "does not exist"),
    (["viz", "features", "--checkpoint", "{tmp}"], "without jepa-latest.pth.tar"),
    (["viz", "masks", "--out", "{tmp}/masks.jpg"], "must end in .png"),
    (["viz", "masks", "--data", "imagenet", "--out", "{tmp}/m.png"], "neither a dataset name"),
    (["viz", "masks", "mask.num_targets=0", "--out", "{tmp}/m.png"], "num_targets"),
    (["viz", "masks", "--count", "0", "--out", "{tmp}/m.png"], "--count must be at least 1"),
])
def test_cli_errors_are_one_clear_line(tmp_path, capsys, args, message):
    (tmp_path / "garbage.pth.tar").write_bytes(b"not a checkpoint at all")
    (tmp_path / "header").mkdir()
    (tmp_path / "header" / "metrics.csv").write_text("step,epoch,loss\n")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.png"))


def test_masks_render_any_number_of_blocks_with_cycling_colours():
    config = load_config("digits", TINY_MODEL + ["mask.num_targets=7", "mask.target_scale=[0.03,0.03]",
                                                 "mask.min_keep=4"])
    masks = training_masks(config, 2)
    assert isinstance(masks, BlockMasks) and masks.targets.shape[0] == 7
    pixels = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    image = render_masks(pixels, masks, config, "seven blocks")
    assert image.size == mask_picture_layout(2, 16).size
    assert len({target_colour(b) for b in range(7)}) == 6  # colours cycle after the palette's six
    assert target_colour(0) == PALETTE[1]
