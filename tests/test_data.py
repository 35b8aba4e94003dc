"""The data package: sources, transforms, keyed sampling, the pretraining loader and evaluation datasets."""

import gzip
import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.data import (
    DataConfig,
    KeyedBatchSampler,
    TrainTransform,
    build_eval_dataset,
    build_pretrain_loader,
    build_source,
    pixel_stats,
    random_resized_crop_box,
    to_standard_mode,
)
from openjepa.data import idx as idx_module
from openjepa.data import loader as loader_module
from openjepa.data.base import ArrayPicture
from openjepa.data.folder import list_images
from openjepa.data.stats import IMAGENET_MEAN, IMAGENET_STD, LUMA, adapt_stats
from openjepa.data.transforms import EvalTransform, center_crop_box, draft_request
from openjepa.errors import DataError
from openjepa.ijepa import ModelConfig
from openjepa.data.sampler import SampleKey
from openjepa.masks import MaskConfig


def _model(img_size=16, patch_size=4, channels=1):
    return ModelConfig(arch="vit_tiny", img_size=img_size, patch_size=patch_size, in_chans=channels, depth=1)


# -- folders --------------------------------------------------------------------------------------------------------
def _save(path: Path, value: int, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * len(mode) if len(mode) > 1 else value).save(path)


def test_folder_with_class_subfolders(tmp_path):
    _save(tmp_path / "zebra" / "z1.png", 10)
    _save(tmp_path / "zebra" / "deeper" / "z2.JPEG", 20)  # nested deeper, upper-case extension
    _save(tmp_path / "apple" / "a1.webp", 30)
    _save(tmp_path / "apple" / ".hidden.png", 40)  # hidden files are not images of the dataset
    (tmp_path / "apple" / "notes.txt").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    source = build_source(DataConfig(dataset="folder", path=str(tmp_path)))
    assert source.classes == ("apple", "zebra")  # sorted; folders without images are no class
    names = [Path(source.describe(i)).name for i in range(len(source))]
    assert names == ["a1.webp", "z2.JPEG", "z1.png"]  # sorted by relative path: zebra/deeper/... first
    assert source.labels.tolist() == [0, 1, 1]
    assert source.stats == (IMAGENET_MEAN, IMAGENET_STD) and source.mean == IMAGENET_MEAN
    image = source.load(2)
    assert image.mode == "RGB" and image.size == (12, 10) and image.getpixel((0, 0)) == (10, 10, 10)
    assert source.load(2, channels=1).mode == "L"
    with pytest.raises(DataError, match="no test split"):
        build_source(DataConfig(dataset="folder", path=str(tmp_path)), "test")


def test_folder_without_classes_follows_symlinks_once(tmp_path):
    root = tmp_path / "flat"
    _save(root / "one.png", 1)
    _save(tmp_path / "elsewhere" / "two.bmp", 2)
    os.symlink(tmp_path / "elsewhere", root / "linked")  # images in a symlinked folder are found
    os.symlink(root, root / "linked" / "loop")  # a loop back to the root must not recurse forever
    listing = list_images(root)
    assert listing.files == ["linked/two.bmp", "one.png"]
    source = build_source(DataConfig(dataset="folder", path=str(root)))
    assert source.classes == ("linked",) and source.labels.tolist() == [0, -1]


def test_folder_of_loose_images_is_unlabelled(tmp_path):
    for i in range(3):
        _save(tmp_path / f"img{i}.tif", i)
    source = build_source(DataConfig(dataset="folder", path=str(tmp_path)))
    assert source.classes == () and source.labels.tolist() == [-1, -1, -1]


def test_folder_train_val_layout(tmp_path):
    _save(tmp_path / "train" / "cat" / "c.png", 1)
    _save(tmp_path / "train" / "dog" / "d.png", 2)
    _save(tmp_path / "val" / "dog" / "d2.png", 3)
    cfg = DataConfig(dataset="folder", path=str(tmp_path))
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert len(train) == 2 and train.labels.tolist() == [0, 1]
    assert len(test) == 1 and test.classes == ("cat", "dog") and test.labels.tolist() == [1]  # training's classes
    _save(tmp_path / "val" / "bird" / "b.png", 4)
    with pytest.raises(DataError, match="bird"):
        build_source(cfg, "test")


def test_folder_errors_are_actionable(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_source(DataConfig(dataset="folder", path=str(tmp_path / "nope")))
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="is a file.*extract"):
        build_source(DataConfig(dataset="folder", path=str(tmp_path / "data.zip")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"no images found.*\.jpg.*\.tiff.*1 \.gif"):
        build_source(DataConfig(dataset="folder", path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="needs data.path"):
        build_source(DataConfig(dataset="folder"))


# -- IDX ------------------------------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str, gz: bool):
    root.mkdir(parents=True, exist_ok=True)
    for kind, tag, array in (("images", "idx3", images), ("labels", "idx1", labels)):
        data = _idx_bytes(array)
        name = f"{prefix}-{kind}-{tag}-ubyte"
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_source_gz_and_raw(tmp_path, gz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 6, 5), dtype=np.uint8)
    test = rng.integers(0, 256, (7, 6, 5), dtype=np.uint8)
    _write_idx(tmp_path, train, np.arange(50) % 3, "train", gz)
    _write_idx(tmp_path, test, np.arange(7) % 3, "t10k", gz)
    source = build_source(DataConfig(dataset="idx", path=str(tmp_path)), "train")
    assert np.array_equal(source.images, train) and source.labels.tolist() == (np.arange(50) % 3).tolist()
    assert source.classes == ("0", "1", "2")
    mean, std = source.stats
    assert mean[0] == pytest.approx(train.mean() / 255) and std[0] == pytest.approx(train.std() / 255)
    held_out = build_source(DataConfig(dataset="mnist", path=str(tmp_path)), "test")
    assert np.array_equal(held_out.images, test) and held_out.classes == tuple("0123456789")
    assert held_out.stats == source.stats  # the training split's statistics, for every split


def test_idx_errors_name_files_and_fixes(tmp_path, monkeypatch):
    _write_idx(tmp_path, np.zeros((4, 3, 3)), np.zeros(4), "train", gz=True)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[.gz\] and t10k-labels-idx1-ubyte\[.gz\]"):
        build_source(DataConfig(dataset="idx", path=str(tmp_path)), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x08\x03junkjunk")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2)))
    with pytest.raises(DataError, match="bad magic number"):
        build_source(DataConfig(dataset="idx", path=str(tmp_path)), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((2, 3, 3)))[:-4])
    with pytest.raises(DataError, match="truncated"):
        build_source(DataConfig(dataset="idx", path=str(tmp_path)), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((3, 3, 3))))
    with pytest.raises(DataError, match="3 images but .* 2 labels"):
        build_source(DataConfig(dataset="idx", path=str(tmp_path)), "test")
    with pytest.raises(DataError, match="needs data.path"):
        build_source(DataConfig(dataset="mnist"))
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", str(tmp_path / "not_installed"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*data.path"):
        build_source(DataConfig(dataset="fashion_mnist"))


# -- CIFAR ----------------------------------------------------------------------------------------------------------
def _cifar_batch(path: Path, images: np.ndarray, labels, key=b"labels", protocol=2):
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # the files store R, G, B planes
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"batch", key: list(labels), b"data": planes, b"filenames": []}, f,
                    protocol=protocol)


def test_cifar10_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 4, 32, 32, 3), dtype=np.uint8)
    for i in range(5):
        _cifar_batch(root / f"data_batch_{i + 1}", train[i], [i, 9, 0, 1])
    test = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _cifar_batch(root / "test_batch", test, [1, 2, 3], protocol=4)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    source = build_source(DataConfig(dataset="cifar10", path=str(tmp_path)), "train")  # the parent folder works
    assert np.array_equal(source.images, train.reshape(20, 32, 32, 3))
    assert source.labels.tolist()[:4] == [0, 9, 0, 1] and source.classes[9] == "c9"
    held_out = build_source(DataConfig(dataset="cifar10", path=str(root)), "test")
    assert np.array_equal(held_out.images, test) and held_out.labels.tolist() == [1, 2, 3]
    os.remove(root / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        build_source(DataConfig(dataset="cifar10", path=str(root)), "train")


def test_cifar100_batches(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 2)):
        _cifar_batch(tmp_path / split, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), range(n),
                     key=b"fine_labels")
    with open(tmp_path / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f, protocol=2)
    source = build_source(DataConfig(dataset="cifar100", path=str(tmp_path)), "train")
    assert len(source) == 6 and source.classes[:2] == ("f0", "f1") and len(source.classes) == 100


class _Malicious:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")  # unpickling would create the file


def test_cifar_refuses_malicious_pickles(tmp_path):
    target = tmp_path / "pwned"
    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": _Malicious(str(target)), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"asks to load (io|builtins)\.open, .* refusing"):
        build_source(DataConfig(dataset="cifar10", path=str(root)))
    assert not target.exists()
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": b"x"}, f)
        f.truncate(10)
    with pytest.raises(DataError, match="not a readable pickle"):
        build_source(DataConfig(dataset="cifar10", path=str(root)))


# -- digits ---------------------------------------------------------------------------------------------------------
def test_digits_split_is_stratified_disjoint_and_fixed():
    train = build_source(DataConfig(), "train")
    test = build_source(DataConfig(), "test")
    assert len(train) + len(test) == 1797 and len(test) == pytest.approx(1797 / 4, abs=5)
    assert train.images.shape[1:] == (8, 8) and train.images.max() == 255
    train_counts, test_counts = np.bincount(train.labels), np.bincount(test.labels)
    assert np.all(np.abs(test_counts / (train_counts + test_counts) - 0.25) < 0.01)
    rows = {img.tobytes() + bytes([int(y)]) for img, y in zip(test.images, test.labels)}
    assert sum(img.tobytes() + bytes([int(y)]) in rows for img, y in zip(train.images, train.labels)) < 5
    assert train.stats == pixel_stats(train.images) and test.stats == train.stats


# -- transforms -----------------------------------------------------------------------------------------------------
def test_square_crop_areas_are_uniform_over_the_scale_range():
    g = torch.Generator().manual_seed(0)
    boxes = np.array([random_resized_crop_box((1000, 1000), (0.3, 1.0), (1.0, 1.0), g) for _ in range(4000)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scale = w * h / 1e6
    assert scale.min() >= 0.3 - 1e-9 and scale.max() <= 1.0 + 1e-9
    # Uniform on [0.3, 1]: the empirical CDF stays close to the straight line (Kolmogorov-Smirnov, n=4000).
    ecdf = np.arange(1, len(scale) + 1) / len(scale)
    assert np.abs(ecdf - (np.sort(scale) - 0.3) / 0.7).max() < 0.03
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= 1000) and np.all(boxes[:, 3] <= 1000)


def test_crop_ratios_are_log_uniform_and_fallback_is_centred():
    g = torch.Generator().manual_seed(1)
    boxes = np.array([random_resized_crop_box((2000, 2000), (0.05, 0.1), (0.5, 2.0), g) for _ in range(3000)])
    log_ratio = np.log((boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1]))
    assert log_ratio.min() >= np.log(0.5) - 1e-9 and log_ratio.max() <= np.log(2.0) + 1e-9
    assert abs(log_ratio.mean()) < 0.03 and abs(np.mean(log_ratio < 0) - 0.5) < 0.03
    # 1 x 2000: no crop of ratio >= 0.75 fits -> the centred 1 x 1.33 box.
    box = random_resized_crop_box((1, 2000), (0.3, 1.0), (0.75, 4 / 3), g)
    assert box == pytest.approx((0.0, 1000 - 2 / 3, 1.0, 1000 + 2 / 3))


def test_center_crop_box_keeps_the_shorter_side():
    assert center_crop_box((40, 20), (16, 16)) == (10.0, 0.0, 30.0, 20.0)
    assert center_crop_box((40, 20), (16, 16), 0.5) == (15.0, 5.0, 25.0, 15.0)
    assert center_crop_box((20, 40), (8, 16)) == (0.0, 15.0, 20.0, 25.0)


def test_views_depend_only_on_seed_epoch_and_index():
    cfg = DataConfig(crop_scale=(0.2, 0.5))
    data = build_pretrain_loader(cfg, _model(), MaskConfig(min_keep=2), seed=5)
    ds = data.dataset
    key = SampleKey(epoch=2, step=0, position=0, global_batch=64)
    a, label, k = ds[(7, key)]
    assert a.shape == (1, 16, 16) and label == int(ds.source.labels[7]) and k is key
    other_slot = SampleKey(epoch=2, step=9, position=33, global_batch=128)
    assert torch.equal(ds[(7, other_slot)][0], a)  # step and position do not matter
    assert not torch.equal(ds[(7, SampleKey(3, 0, 0, 64))][0], a)  # another epoch, another view
    again = build_pretrain_loader(cfg, _model(), MaskConfig(min_keep=2), seed=5).dataset
    assert torch.equal(again[(7, key)][0], a)
    reseeded = build_pretrain_loader(cfg, _model(), MaskConfig(min_keep=2), seed=6).dataset
    assert not torch.equal(reseeded[(7, key)][0], a)


def test_hflip_mirrors_the_view():
    image = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))  # a left-to-right ramp
    mean, std = (0.0,), (1.0,)
    seen = set()
    for i in range(20):
        plain = TrainTransform(16, 1, mean, std, hflip=False)(ArrayPicture(image), torch.Generator().manual_seed(i))
        maybe = TrainTransform(16, 1, mean, std, hflip=True)(ArrayPicture(image), torch.Generator().manual_seed(i))
        flipped = not torch.equal(plain, maybe)
        if flipped:
            assert torch.equal(maybe, plain.flip(-1))
        seen.add(flipped)
    assert seen == {True, False}


def test_channel_conversions():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    grey = np.full((4, 4), 77, dtype=np.uint8)
    luma = sum(w * v for w, v in zip(LUMA, (200, 100, 50)))
    to_grey = EvalTransform(8, 1, (0.0,), (1.0,))
    to_rgb = EvalTransform(8, 3, (0.0,) * 3, (1.0,) * 3)
    assert torch.allclose(to_grey(ArrayPicture(rgb)), torch.full((1, 8, 8), luma / 255), atol=1 / 255)
    out = to_rgb(ArrayPicture(grey))
    assert out.shape == (3, 8, 8) and torch.allclose(out, torch.full((3, 8, 8), 77 / 255))
    assert torch.allclose(to_rgb(ArrayPicture(rgb))[:, 0, 0], torch.tensor([200, 100, 50]) / 255)


def test_odd_modes_convert_exactly():
    sixteen = Image.fromarray(np.array([[0, 257, 65535, 32768]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert np.asarray(to_standard_mode(sixteen, 1)).tolist() == [[0, 1, 255, 128]]
    as_int = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    assert np.asarray(to_standard_mode(as_int, 1)).tolist() == [[0, 255, 255, 0]]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_standard_mode(unit, 1)).tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[-10.0, 0.0, 10.0]], dtype=np.float32))
    assert np.asarray(to_standard_mode(wide, 1)).tolist() == [[0, 128, 255]]
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [100, 50, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8))
    out = np.asarray(to_standard_mode(rgba, 3))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [100, 50, 0]  # white background
    assert abs(int(out[0, 2, 0]) - 127) <= 1
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_standard_mode(palette, 3)).tolist() == [[[255, 255, 255], [0, 0, 255]]]
    assert to_standard_mode(Image.new("1", (2, 2), 1), 3).mode == "L"
    cmyk = to_standard_mode(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), 3)
    assert np.asarray(cmyk)[0, 0].tolist() == [255, 0, 0]


def test_stats_adaptation():
    assert adapt_stats((0.5,), (0.2,), 3) == ((0.5,) * 3, (0.2,) * 3)
    mean, std = adapt_stats(IMAGENET_MEAN, IMAGENET_STD, 1)
    assert mean[0] == pytest.approx(sum(w * m for w, m in zip(LUMA, IMAGENET_MEAN)))
    with pytest.raises(DataError, match="3 values"):
        adapt_stats((0.1, 0.2), (0.1, 0.2), 3)
    pixels = np.random.default_rng(0).integers(0, 256, (10, 5, 5, 3), dtype=np.uint8)
    mean, std = pixel_stats(pixels)
    flat = pixels.reshape(-1, 3) / 255
    assert np.allclose(mean, flat.mean(0)) and np.allclose(std, flat.std(0))


# -- batch sampler --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world, accum", [(2, 1), (1, 3), (2, 2)])
def test_ranks_and_micro_batches_interleave_into_the_single_process_batches(world, accum):
    """Micro-batch a of rank r plays virtual rank a * world + r: a step's micro-batches on all ranks together are
    the single-process batch of the same global size, position for position."""
    n, per_rank = 103, 4
    virtual = world * accum
    single = KeyedBatchSampler(n, per_rank * virtual, world_size=1, rank=0, seed=3)
    ranks = [KeyedBatchSampler(n, per_rank, world_size=world, rank=r, seed=3, accum_steps=accum)
             for r in range(world)]
    for epoch in (0, 1):
        for s in [single, *ranks]:
            s.set_epoch(epoch)
        steps = 103 // (4 * virtual)
        assert single.steps_per_epoch == ranks[0].steps_per_epoch == steps and len(ranks[-1]) == steps * accum
        per_step = [list(zip(*[iter(list(r))] * accum)) for r in ranks]  # each rank's micro-batches, by step
        for step, whole in enumerate(single):
            merged = sorted((item for r in per_step for micro in r[step] for item in micro),
                            key=lambda item: item[1].position)
            assert [i for i, _ in merged] == [i for i, _ in whole]
            assert [k.position for _, k in merged] == list(range(per_rank * virtual))
            for _, key in merged + whole:
                assert (key.epoch, key.step, key.global_batch) == (epoch, step, per_rank * virtual)
            for r in range(world):
                for a, micro in enumerate(per_step[r][step]):
                    assert {k.position % virtual for _, k in micro} == {a * world + r}
    single.set_epoch(0)
    first = [i for batch in single for i, _ in batch]
    single.set_epoch(1)
    assert first != [i for batch in single for i, _ in batch]  # a new permutation each epoch
    assert len(set(first)) == len(first)


def test_resume_skips_batches_without_loading_them():
    sampler = KeyedBatchSampler(50, 5, seed=1)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_start_step(7)
    resumed = list(sampler)
    assert resumed == full[7:] and resumed[0][0][1].step == 7
    sampler.set_epoch(5)
    assert len(list(sampler)) == 10  # a new epoch starts from its first batch


@pytest.mark.parametrize("world, accum", [(2, 1), (2, 2)])
def test_loader_ranks_reproduce_the_single_process_batches(world, accum):
    """Simulated ranks (and their micro-batches) see exactly the images and masks of the matching rows of the
    single-process batch."""
    mask = MaskConfig(min_keep=2)
    virtual = world * accum
    single = build_pretrain_loader(DataConfig(batch_size=4 * virtual), _model(), mask, seed=11)
    ranks = [build_pretrain_loader(DataConfig(batch_size=4), _model(), mask, seed=11, rank=r, world_size=world,
                                   accum_steps=accum) for r in range(world)]
    for data in [single, *ranks]:
        data.set_epoch(1, start_step=3)
    assert ranks[0].steps_per_epoch == single.steps_per_epoch and ranks[0].accum_steps == accum
    steps = [list(zip(*[itertools.islice(r.loader, 3 * accum)] * accum)) for r in ranks]
    for step, whole in enumerate(list(single.loader)[:3]):
        for r in range(world):
            for a, part in enumerate(steps[r][step]):
                rows = torch.arange(a * world + r, 4 * virtual, virtual)
                assert torch.equal(part.images, whole.images[rows]) and torch.equal(part.labels, whole.labels[rows])
                assert torch.equal(part.context, whole.context[rows])
                assert torch.equal(part.targets, whole.targets[:, rows])


def test_automatic_workers_share_the_cores_of_this_machine(monkeypatch):
    """data.num_workers=null: one core per process of this machine for training, the rest decode (at most 8)."""
    files = type("FileSource", (), {"in_memory": False})()
    monkeypatch.setattr(loader_module, "available_cpus", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_module.auto_num_workers(files, world_size=1) == 8
    assert loader_module.auto_num_workers(files, world_size=8) == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun on 2 nodes of 8 processes: 16 in all, 8 here
    assert loader_module.auto_num_workers(files, world_size=16) == 7
    assert loader_module.auto_num_workers(type("Memory", (), {"in_memory": True})(), world_size=16) == 0


# -- loader end to end ----------------------------------------------------------------------------------------------
def test_pretrain_loader_on_digits():
    cfg = DataConfig(batch_size=32)
    data = build_pretrain_loader(cfg, _model(img_size=16, patch_size=2, channels=3), MaskConfig(), seed=0)
    assert data.num_workers == 0 and data.steps_per_epoch == len(data.dataset) // 32
    assert data.mean == data.dataset.source.stats[0] * 3  # grey statistics replicated
    data.set_epoch(0)
    batches = list(data.loader)
    assert len(batches) == data.steps_per_epoch
    batch = batches[0]
    assert batch.images.shape == (32, 3, 16, 16) and batch.labels.shape == (32,)
    assert batch.context.shape[0] == 32 and batch.targets.shape[:2] == (4, 32)
    assert batch.context.max() < 64 and batch.targets.max() < 64
    images = torch.cat([b.images for b in batches])
    assert abs(float(images.mean())) < 0.25 and abs(float(images.std()) - 1) < 0.25  # roughly normalised
    assert set(torch.cat([b.labels for b in batches]).tolist()) == set(range(10))
    assert data.bad_file_count() == 0 and data.bad_files.summary() is None


def test_loader_errors_and_limits():
    with pytest.raises(DataError, match="1347 images, fewer than one global batch.*data.batch_size to at most 673"):
        build_pretrain_loader(DataConfig(batch_size=1000), _model(), MaskConfig(), seed=0, world_size=2)
    with pytest.raises(DataError, match="raise data.max_samples"):
        build_pretrain_loader(DataConfig(batch_size=16, max_samples=10), _model(), MaskConfig(), seed=0)
    small = build_pretrain_loader(DataConfig(batch_size=16, max_samples=100), _model(), MaskConfig(min_keep=2), 0)
    assert len(small.dataset) == 100 and small.steps_per_epoch == 6
    assert len(set(small.dataset.source.labels.tolist())) == 10  # a random subset, not the first 100 samples
    with pytest.raises(DataError, match="in_chans=2"):
        build_pretrain_loader(DataConfig(), _model(channels=2), MaskConfig(), seed=0)
    with pytest.raises(DataError, match="3 input channel"):
        build_pretrain_loader(DataConfig(mean=(0.1, 0.2), std=(0.3, 0.3)), _model(channels=3), MaskConfig(), 0)
    with pytest.raises(ValueError, match="crop_scale"):
        DataConfig(crop_scale=(0.5, 1.5))


# -- evaluation datasets --------------------------------------------------------------------------------------------
def test_eval_dataset_is_deterministic_and_uses_the_held_out_split():
    test = build_eval_dataset(DataConfig(), _model(img_size=24, channels=1), "test")
    train = build_eval_dataset(DataConfig(), _model(img_size=24, channels=1), "train")
    assert len(test) + len(train) == 1797 and test.classes == tuple("0123456789")
    image, label = test[3]
    assert image.shape == (1, 24, 24) and label == int(test.source.labels[3])
    assert torch.equal(test[3][0], image)
    # The eval view is the whole 8x8 digit, bicubic-upscaled: shrinking it back recovers the digit.
    raw = test.source.images[3].astype(np.float32) / 255
    mean, std = test.source.stats
    back = torch.nn.functional.avg_pool2d((image * std[0] + mean[0])[None], 3)[0, 0].numpy()
    assert np.abs(back - raw).mean() < 0.08


def test_eval_dataset_for_folders_center_crops(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = 255  # the centred square is white, the sides black
    (tmp_path / "c").mkdir()
    Image.fromarray(img).save(tmp_path / "c" / "wide.png")
    dataset = build_eval_dataset(DataConfig(dataset="folder", path=str(tmp_path), mean=(0.0,), std=(1.0,)),
                                 _model(img_size=8, channels=3), "train")
    image, label = dataset[0]
    assert label == 0 and torch.allclose(image[:, :, 1:-1], torch.ones(3, 8, 6), atol=1e-6)
    assert image.min() > 0.9  # only the outer columns see a little of the black sides (the bicubic kernel)


def test_large_jpegs_are_decoded_at_reduced_size_with_the_same_result(tmp_path):
    y, x = np.mgrid[0:800, 0:1000]
    smooth = np.stack([x * 255 // 999, y * 255 // 799, (x + y) * 255 // 1798], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    cfg = DataConfig(dataset="folder", path=str(tmp_path), mean=(0.0,), std=(1.0,))
    dataset = build_eval_dataset(cfg, _model(img_size=32, channels=3), "train")
    request = draft_request(center_crop_box((1000, 800), (32, 32)), (1000, 800), (32, 32))
    assert request == (40, 32)  # the 800 px crop may shrink 25x and still cover 32 px
    with dataset.source.open(0) as picture:
        assert picture.decode(3, request).size == (125, 100)  # JPEG decoding at 1/8 scale
    reduced = dataset[0][0]
    with Image.open(tmp_path / "big.jpg") as full:
        expected = full.convert("RGB").resize((32, 32), Image.BICUBIC, box=center_crop_box((1000, 800), (32, 32)))
    expected = torch.from_numpy(np.asarray(expected).transpose(2, 0, 1) / 255).float()
    assert (reduced - expected).abs().mean() < 0.01


# -- the real Fashion-MNIST (Debian package dataset-fashion-mnist) ----------------------------------------------------
@pytest.mark.slow
def test_real_fashion_mnist():
    if not Path(idx_module.FASHION_MNIST_DIR).is_dir():
        pytest.fail("Fashion-MNIST is not installed: sudo apt-get install dataset-fashion-mnist")
    train = build_source(DataConfig(dataset="fashion_mnist"), "train")
    test = build_source(DataConfig(dataset="fashion_mnist"), "test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10 and train.classes[9] == "Ankle boot"
    assert train.stats[0][0] == pytest.approx(0.2860, abs=1e-4) and train.stats[1][0] == pytest.approx(0.3530, abs=1e-4)
    data = build_pretrain_loader(DataConfig(dataset="fashion_mnist", batch_size=256), _model(28, 4), MaskConfig(), 0)
    data.set_epoch(0)
    batch = next(iter(data.loader))
    assert batch.images.shape == (256, 1, 28, 28) and data.steps_per_epoch == 234
