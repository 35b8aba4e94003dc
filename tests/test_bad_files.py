"""Robustness of folder datasets: odd but readable files are converted, unreadable ones skipped and reported."""

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.cli.main import main as cli_main
from openjepa.data import DataConfig, build_eval_dataset, build_pretrain_loader
from openjepa.data import images as images_module
from openjepa.data.scan import scan_folder
from openjepa.ijepa import ModelConfig
from openjepa.masks import MaskConfig


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width x height`` 1-bit pixels (Pillow checks the size on open)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _tiff_with_unknown_compression(path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 7).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 259:  # Compression
            data[entry + 8:entry + 10] = struct.pack("<H", 34000)  # no such scheme
    path.write_bytes(bytes(data))


def _photo(rng, size=(48, 40)) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_messy_folder(root: Path) -> tuple[set[str], dict[str, str]]:
    """Class folders ``a`` (good photos) and ``b`` (odd and bad files). Returns (unreadable paths, odd modes)."""
    rng = np.random.default_rng(0)
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    for i in range(12):
        _photo(rng).save(a / f"photo{i}.jpg", quality=90)
    _photo(rng).save(a / "UPPER.JPG")
    _photo(rng).save(a / "photo.webp")
    _photo(rng).save(a / "photo.bmp")
    _photo(rng).save(a / "photo.tiff")
    odd = {
        "cmyk.jpg": _photo(rng).convert("CMYK"),
        "grey.png": _photo(rng).convert("L"),
        "palette.png": _photo(rng).convert("P"),
        "rgba.png": _photo(rng).convert("RGBA"),
        "grey_alpha.png": _photo(rng).convert("LA"),
        "one_bit.png": _photo(rng).convert("1"),
        "sixteen.png": Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)),
        "float.tif": Image.fromarray(rng.random((40, 48), dtype=np.float32)),
        "one_pixel.png": Image.new("RGB", (1, 1), (200, 10, 10)),
        "tall.png": Image.new("L", (1, 2000), 128),
    }
    transparent = _photo(rng).convert("P")
    transparent.info["transparency"] = 0
    odd["palette_transparent.png"] = transparent
    for name, img in odd.items():
        img.save(b / name)
    modes = {name: Image.open(b / name).mode for name in odd}

    unreadable = {}
    (b / "empty.jpg").write_bytes(b"")
    good = (a / "photo0.jpg").read_bytes()
    (b / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = io.BytesIO()
    _photo(rng, (64, 64)).save(png, format="PNG")
    (b / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (b / "text.jpg").write_text("this is not an image\n")
    _tiff_with_unknown_compression(b / "unsupported.tif")
    pixels = Image.MAX_IMAGE_PIXELS
    _png_header_only(b / "bomb.png", 20000, pixels // 10000 + 1)  # over twice the limit: an error
    _png_header_only(b / "bomb_warning.png", 10000, pixels // 10000 + 1)  # over the limit: only a warning
    (b / "locked.png").write_bytes((b / "grey.png").read_bytes())
    os.chmod(b / "locked.png", 0)
    os.symlink(b / "missing.jpg", b / "broken_link.jpg")
    (b / "notes.txt").write_text("ignored: not an image extension")
    Image.new("L", (4, 4)).save(b / "anim.gif")  # GIF is not among the extensions: ignored, not unreadable
    for name in ("empty.jpg", "truncated.jpg", "truncated.png", "text.jpg", "unsupported.tif", "bomb.png",
                 "bomb_warning.png", "locked.png", "broken_link.jpg"):
        unreadable[name] = str(b / name)
    return set(unreadable.values()), modes


@pytest.fixture
def messy(tmp_path, monkeypatch):
    """The messy folder; ``locked.png`` is made unreadable even for root (who may read a chmod 000 file)."""
    unreadable, modes = make_messy_folder(tmp_path / "data")
    locked = str(tmp_path / "data" / "b" / "locked.png")
    try:
        open(locked, "rb").close()
        readable_anyway = True  # running as root: chmod 000 does not stop us, so simulate the failure
    except PermissionError:
        readable_anyway = False
    if readable_anyway:
        real_open = images_module._open_binary

        def deny(path):
            if str(path) == locked:
                raise PermissionError(13, "Permission denied", path)
            return real_open(path)

        monkeypatch.setattr(images_module, "_open_binary", deny)
    yield tmp_path / "data", unreadable, modes
    os.chmod(locked, 0o644)


def _model(channels):
    return ModelConfig(arch="vit_tiny", img_size=16, patch_size=4, in_chans=channels, depth=1)


@pytest.mark.parametrize("channels,workers", [(3, 0), (1, 1)])
def test_epoch_over_messy_folder_replaces_unreadable_files(messy, tmp_path, channels, workers):
    root, unreadable, _ = messy
    cfg = DataConfig(dataset="folder", path=str(root), batch_size=5, num_workers=workers)
    data = build_pretrain_loader(cfg, _model(channels), MaskConfig(min_keep=2), seed=0,
                                 bad_file_dir=tmp_path / f"records{workers}")
    assert len(data.dataset) == 16 + 11 + len(unreadable)  # every image extension is listed, bad or not
    data.set_epoch(0)
    batches = list(data.loader)
    assert len(batches) == data.steps_per_epoch == len(data.dataset) // 5
    for batch in batches:
        assert batch.images.shape == (5, channels, 16, 16)
        assert torch.isfinite(batch.images).all()
        assert set(batch.labels.tolist()) <= {0, 1}
    seen = {r.path for r in data.bad_files.records()}
    # Only those drawn this epoch were met (the last incomplete batch is dropped): all of them are truly bad.
    assert seen <= unreadable
    data.set_epoch(1)
    list(data.loader)
    data.set_epoch(2)
    list(data.loader)
    seen = {r.path for r in data.bad_files.records()}
    assert seen == unreadable  # three epochs drew every file (each epoch drops one random file of 36)
    summary = data.bad_files.summary(limit=20)
    assert summary.startswith(f"{len(unreadable)} unreadable image files")
    for path in unreadable:
        assert summary.count(path) == 1
    assert data.bad_file_count() == len(unreadable)


def test_replacements_are_deterministic_and_workers_agree(messy, tmp_path):
    root, _, _ = messy
    runs = []
    for workers in (0, 1):
        cfg = DataConfig(dataset="folder", path=str(root), batch_size=4, num_workers=workers)
        data = build_pretrain_loader(cfg, _model(3), MaskConfig(min_keep=2), seed=3, bad_file_dir=tmp_path / "r")
        data.set_epoch(1)
        runs.append([b.images for b in data.loader])
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_reasons_name_the_problem(messy, tmp_path):
    root, unreadable, _ = messy
    limit = Image.MAX_IMAGE_PIXELS
    dataset = build_eval_dataset(DataConfig(dataset="folder", path=str(root)), _model(3), "train",
                                 bad_file_dir=tmp_path / "eval")
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 16, 16)
    reasons = {Path(r.path).name: r.reason for r in dataset.bad_files.records()}
    assert set(reasons) == {Path(p).name for p in unreadable}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["text.jpg"] == "a text file, not an image"
    assert "truncated" in reasons["truncated.jpg"] and "truncated" in reasons["truncated.png"]
    assert "decompression bomb" in reasons["bomb.png"] and "decompression bomb" in reasons["bomb_warning.png"]
    assert "permission denied" in reasons["locked.png"]
    assert "broken symbolic link" in reasons["broken_link.jpg"]
    assert "not an image format" in reasons["unsupported.tif"]
    assert Image.MAX_IMAGE_PIXELS == limit  # the global limit was left alone


def test_odd_modes_convert_to_sensible_pixels(messy):
    root, _, modes = messy
    assert modes["cmyk.jpg"] == "CMYK" and modes["sixteen.png"].startswith("I")
    assert modes["float.tif"] == "F" and modes["one_bit.png"] == "1" and modes["palette.png"] == "P"
    dataset = build_eval_dataset(DataConfig(dataset="folder", path=str(root), mean=(0.0,), std=(1.0,)),
                                 _model(3), "train")
    names = [Path(dataset.source.describe(i)).name for i in range(len(dataset))]
    one_pixel = dataset[names.index("one_pixel.png")][0]
    assert torch.allclose(one_pixel[:, 0, 0], torch.tensor([200, 10, 10]) / 255, atol=1e-6)
    tall = dataset[names.index("tall.png")][0]
    assert torch.allclose(tall, torch.full_like(tall, 128 / 255))


def test_check_data_report_and_exit_codes(messy, tmp_path, capsys):
    root, unreadable, _ = messy
    report = scan_folder(root, workers=0, progress=False)
    split = report.splits[0]
    assert {r.path for r in split.unreadable} == unreadable
    assert split.readable == 27 and split.class_counts == {"a": 16, "b": 11}
    assert split.converted["CMYK"] == 1 and split.converted["P"] == 2 and split.converted["F"] == 1
    assert split.ignored == {".txt": 1, ".gif": 1}
    assert split.small == 2 and split.extreme == 1
    assert cli_main(["check-data", str(root), "--workers", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "27 readable of 36 listed" in text and "classes: 2 (a 16, b 11)" in text
    assert "CMYK 1" in text and "9 unreadable files" in text and "Result: usable" in text
    for path in unreadable:
        assert path in text

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "empty.png").write_bytes(b"")
    (only_bad / "text.jpg").write_text("hello")
    assert cli_main(["check-data", str(only_bad), "--workers", "0", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "NOT usable" in out and "empty file (0 bytes)" in out

    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "readme.md").write_text("nothing here")
    assert cli_main(["check-data", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no images found" in err and ".jpg" in err and ".tiff" in err and "1 .md" in err
    assert cli_main(["check-data", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_check_data_with_worker_processes(messy):
    root, unreadable, _ = messy
    report = scan_folder(root, workers=2, progress=False)
    assert {r.path for r in report.splits[0].unreadable} == unreadable
    assert report.usable
