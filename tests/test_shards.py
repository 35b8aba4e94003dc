"""Tar shards: names, the header index, `make-shards`, and the training stream's split across ranks and workers."""

import io
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.cli.main import main as cli_main
from openjepa.data import DataConfig, build_eval_dataset, build_pretrain_loader
from openjepa.data.shard_index import build_index, expand_braces, expand_shard_paths, shard_paths
from openjepa.data.shard_writer import write_shards
from openjepa.data.shards import ShardSource, emission_order
from openjepa.errors import DataError
from openjepa.ijepa import ModelConfig
from openjepa.data.sampler import SampleKey
from openjepa.masks import MaskConfig

MODEL = ModelConfig(arch="vit_tiny", img_size=8, patch_size=2, in_chans=1)


def _png(value: int, size=(6, 5)) -> bytes:
    out = io.BytesIO()
    Image.new("L", size, value % 256).save(out, "PNG")
    return out.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _numbered_shards(root: Path, sizes=(23, 20, 7)) -> list[str]:
    """Shards whose sample ``i`` has label ``i`` and grey level ``i``: every sample identifies itself."""
    paths, i = [], 0
    for number, size in enumerate(sizes):
        members = []
        for _ in range(size):
            members += [(f"s{i:04d}.png", _png(i)), (f"s{i:04d}.cls", str(i).encode())]
            i += 1
        paths.append(str(_write_tar(root / f"part-{number}.tar", members)))
    return paths


def _epoch(paths, world, rank, workers, epoch=0, start=0, batch=4, buffer=5, seed=0, accum=1):
    cfg = DataConfig(dataset="shards", path=tuple(paths), batch_size=batch, num_workers=workers,
                     shuffle_buffer=buffer)
    data = build_pretrain_loader(cfg, MODEL, MaskConfig(min_keep=2), seed=seed, rank=rank, world_size=world,
                                 accum_steps=accum)
    data.set_epoch(epoch, start)
    return data, list(data.loader)


def test_brace_and_glob_expansion(tmp_path):
    assert expand_braces("a-{08..11}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert expand_braces("{a,{b,c}}d") == ["ad", "bd", "cd"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("keep{}{abc}{") == ["keep{}{abc}{"]
    for n in range(3):
        (tmp_path / f"t-{n:03d}.tar").write_bytes(b"x")
    assert expand_shard_paths(str(tmp_path / "t-{000..002}.tar")) == [str(tmp_path / f"t-{n:03d}.tar")
                                                                      for n in range(3)]
    spec = [str(tmp_path / "t-00[12].tar"), str(tmp_path / "t-000.tar"), str(tmp_path / "t-001.tar")]
    assert [Path(p).name for p in expand_shard_paths(spec)] == ["t-001.tar", "t-002.tar", "t-000.tar"]
    with pytest.raises(DataError, match="1 pattern.*t-003.tar"):
        expand_shard_paths(str(tmp_path / "t-{000..003}.tar"))
    with pytest.raises(DataError, match="no test split"):
        shard_paths(str(tmp_path / "t-*.tar"), "test")


def test_index_reads_headers_long_names_and_damage(tmp_path):
    deep = "d" * 120 + "/img"  # a long path: a GNU long name, a PAX path record
    members = [(f"{deep}.png", _png(1)), (f"{deep}.cls", b"3\n"), ("caf\u00e9.jpeg", _png(2)),
               ("caf\u00e9.json", b"{}"), ("only.txt", b"no image"), ("x.png", _png(4)), ("x.cls", b"seven")]
    gnu = _write_tar(tmp_path / "gnu.tar", members, tarfile.GNU_FORMAT)
    pax = _write_tar(tmp_path / "pax.tar", members, tarfile.PAX_FORMAT)
    index = build_index([str(gnu), str(pax)], progress=False)
    names = [index.names[i] for i in range(len(index))]
    assert names == [f"{deep}.png", "caf\u00e9.jpeg", "x.png"] * 2
    assert index.label.tolist() == [3, -1, -1] * 2 and index.classes == ("0", "1", "2", "3")
    assert index.without_image == Counter({"txt": 2})
    assert sum("not an integer" in p.reason for p in index.problems) == 2  # the two "seven" labels
    with tarfile.open(pax) as tar:  # byte ranges agree with Python's own reader
        info = tar.getmember("caf\u00e9.jpeg")
        assert (index.offset[4], index.size[4]) == (info.offset_data, info.size)
    data = gnu.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:int(index.offset[2]) + 10])  # ends inside the last image
    (tmp_path / "text.tar").write_text("hello, not a tar file\n" * 40)
    (tmp_path / "empty.tar").write_bytes(b"")
    damaged = build_index([str(cut), str(tmp_path / "text.tar"), str(tmp_path / "empty.tar")], progress=False)
    assert len(damaged) == 2
    reasons = {Path(p.path).name: p.reason for p in damaged.problems}
    assert "ends inside member 'x.png'" in reasons["cut.tar"]
    assert "not a tar file" in reasons["text.tar"] and "empty file" in reasons["empty.tar"]


def test_emission_order_is_a_bounded_permutation():
    rng = np.random.default_rng(0)
    for count, buffer in [(50, 5), (7, 20), (100, 1), (64, 64)]:
        order = emission_order(count, buffer, rng)
        assert sorted(order.tolist()) == list(range(count))
        # the e-th sample out was read at most buffer - 1 samples later: at most `buffer` are ever held
        assert all(order[e] <= e + buffer - 1 for e in range(count))
    assert emission_order(30, 10, np.random.default_rng(1)).tolist() != list(range(30))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_and_workers_read_every_sample_once(tmp_path, world):
    paths = _numbered_shards(tmp_path)
    n, batch = 50, 4
    steps = n // (batch * world)
    for workers in (0, 1, 2):
        seen = []
        for rank in range(world):
            data, batches = _epoch(paths, world, rank, workers, batch=batch)
            assert len(batches) == steps == data.steps_per_epoch  # DDP: every rank makes the same steps
            for b in batches:
                labels = b.labels.tolist()
                seen += labels
                # the image is the sample's own (grey level = label): nothing was swapped on the way
                table = data.dataset.transform.to_tensor.table[0]
                assert torch.allclose(b.images[:, 0, 0, 0], torch.from_numpy(table[b.labels.numpy() % 256]))
        assert len(seen) == len(set(seen)) == steps * batch * world, (world, workers)
        assert n - len(seen) < batch * world  # only the incomplete last global batch is left out


@pytest.mark.parametrize("workers", [0, 2])
def test_accumulated_micro_batches_read_every_sample_once_with_global_keys(tmp_path, workers):
    """2 ranks x 2 micro-batches: each micro-batch plays a virtual rank, so a step's keys over both ranks and both
    micro-batches are the positions 0..G-1 of one global batch, and each micro-batch gets its rows of the step's
    global masks; resuming skips whole steps."""
    paths = _numbered_shards(tmp_path)
    world, accum, batch = 2, 2, 4
    g = world * accum * batch
    steps = 50 // g
    seen, positions = [], {}
    for rank in range(world):
        data, batches = _epoch(paths, world, rank, workers, batch=batch, accum=accum)
        assert data.steps_per_epoch == steps and len(batches) == steps * accum
        collate = data.loader.collate_fn
        for unit, b in enumerate(batches):
            step, micro = divmod(unit, accum)
            seen += b.labels.tolist()
            keys = [SampleKey(0, step, j * world * accum + micro * world + rank, g) for j in range(batch)]
            masks = collate.masks_for(keys, batch)
            assert torch.equal(b.context, masks.context) and torch.equal(b.targets, masks.targets)
            positions.setdefault(step, []).extend(k.position for k in keys)
        if workers == 0:  # the stream's own keys, as the collate function receives them
            stream = data.batch_sampler
            stream.set_epoch(0)
            got = [[key for *_, key in items] for items in stream]
            assert [[k.position for k in keys] for keys in got] == [
                [j * world * accum + (u % accum) * world + rank for j in range(batch)] for u in range(len(got))]
        _, resumed = _epoch(paths, world, rank, workers, batch=batch, accum=accum, start=1)
        assert [r.labels.tolist() for r in resumed] == [b.labels.tolist() for b in batches[accum:]]
    assert len(seen) == len(set(seen)) == steps * g
    assert all(sorted(p) == list(range(g)) for p in positions.values()) and len(positions) == steps


def test_epochs_are_deterministic_resumable_and_keyed(tmp_path):
    paths = _numbered_shards(tmp_path, sizes=(30, 18))
    data, full = _epoch(paths, 2, 1, 2, epoch=1)
    _, again = _epoch(paths, 2, 1, 2, epoch=1)
    _, resumed = _epoch(paths, 2, 1, 2, epoch=1, start=2)
    _, other_epoch = _epoch(paths, 2, 1, 2, epoch=2)
    assert len(full) == 6 and len(resumed) == 4
    for a, b in zip(full, again):
        assert torch.equal(a.images, b.images) and torch.equal(a.context, b.context)
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
        assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert [b.labels.tolist() for b in full] != [b.labels.tolist() for b in other_epoch]
    collate = data.loader.collate_fn
    for step, b in enumerate(full):  # masks are those of (seed, epoch, step), rows of rank 1 of 2
        keys = [SampleKey(1, step, j * 2 + 1, 8) for j in range(4)]
        masks = collate.masks_for(keys, 4)
        assert torch.equal(b.context, masks.context) and torch.equal(b.targets, masks.targets)


def test_unreadable_members_are_replaced_and_reported(tmp_path, capsys):
    members = []
    for i in range(12):
        data = b"just some text\n" if i == 3 else _png(i)
        if i == 7:  # a PNG cut in the middle of its pixel data
            out = io.BytesIO()
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(out, "PNG")
            data = out.getvalue()[:600]
        members += [(f"s{i:02d}.png", data), (f"s{i:02d}.cls", str(i).encode())]
    shard = _write_tar(tmp_path / "bad.tar", members)
    data, batches = _epoch([str(shard)], 1, 0, 1, batch=4)
    assert len(batches) == 3
    labels = [x for b in batches for x in b.labels.tolist()]
    assert 3 not in labels and 7 not in labels and len(labels) == 12  # replaced by readable samples
    reasons = {r.path: r.reason for r in data.bad_files.records()}
    assert reasons == {f"{shard}:s03.png": "a text file, not an image",
                       f"{shard}:s07.png": "truncated image data (the file is incomplete: 600 bytes)"}
    assert f"Run `openjepa check-data {shard}`" in data.bad_files.summary()
    assert cli_main(["check-data", str(shard), "--workers", "0", "--no-progress"]) == 0  # what the advice runs
    report = capsys.readouterr().out
    assert "images: 10 readable of 12 listed" in report and f"{shard}:s03.png: a text file, not an image" in report


def test_make_shards_round_trip_and_evaluation(tmp_path, capsys):
    root = tmp_path / "photos"
    files = {}
    for split, cls, count in [("train", "ant", 3), ("train", "bee", 4), ("val", "bee", 2)]:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / split / cls / f"{cls}.{i}.png"  # a dot in the name: keys must stay unique
            path.write_bytes(_png(10 * i + len(cls), size=(5 + i, 4)))
            files[path.name] = path.read_bytes()
    (root / "train" / "ant" / "notes.jpg").write_text("not a picture")
    out = tmp_path / "shards"
    assert cli_main(["make-shards", str(root), str(out), "--shard-size", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[train] 7 images in 3 shard(s)" in printed and "notes.jpg: a text file, not an image" in printed
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "train-000000.tar", "train-000001.tar",
                                                     "train-000002.tar", "val-000000.tar"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "train-000000.tar").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode
    train, test = ShardSource(str(out), "train"), ShardSource(str(out), "test")
    assert train.classes == test.classes == ("ant", "bee") and len(train) == 7 and len(test) == 2
    for source in (train, test):
        for i in range(len(source)):
            name = source.index.names[i].split("_", 1)[1]  # 00000003_bee_1.png -> bee_1.png
            original = name.replace("_", ".", 1)
            assert source.read(i) == files[original]
            assert source.labels[i] == ("ant", "bee").index(original.split(".")[0])
    sizes = [int(lbl) for lbl in np.bincount(train.index.shard)]
    assert sizes == [3, 3, 1]
    cfg = DataConfig(dataset="shards", path=str(out))
    image, label = build_eval_dataset(cfg, MODEL, "test")[1]
    assert image.shape == (1, 8, 8) and label == 1
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(root, out, progress=False)
    write_shards(root, out, max_bytes=4096, overwrite=True, progress=False)
    shards = sorted(out.glob("train-*.tar"))
    assert len(shards) > 3 and all(p.stat().st_size <= 4096 for p in shards)
    assert not list(out.glob(".*.tmp"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        write_shards(tmp_path / "empty", tmp_path / "o", progress=False)


def test_pretraining_on_shards_resumes_exactly(tmp_path):
    from sklearn.datasets import load_digits

    from openjepa.config import load_config
    from openjepa.train import pretrain

    digits = load_digits()
    members = []
    for i in range(96):
        out = io.BytesIO()
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(out, "PNG")
        members += [(f"{i:04d}.png", out.getvalue()), (f"{i:04d}.cls", str(digits.target[i]).encode())]
    (tmp_path / "shards").mkdir()
    _write_tar(tmp_path / "shards" / "train-000000.tar", members[:120])  # 60 samples, then 36
    _write_tar(tmp_path / "shards" / "train-000001.tar", members[120:])
    tiny = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.pred_depth=1",
            "model.pred_emb_dim=16", "mask.min_keep=4", "optim.epochs=2", "optim.warmup_epochs=1",
            "eval.online_every=0", "eval.final_probe=false", "train.threads=1", "data.dataset=shards",
            f"data.path={tmp_path / 'shards'}", "data.batch_size=16", "data.num_workers=1", "data.shuffle_buffer=20"]

    def run(out, *extra, **kw):
        return pretrain(load_config("digits", tiny + [f"train.out_dir={out}", *extra]), **kw)

    assert run(tmp_path / "full").position.global_step == 12  # 96 // 16 steps per epoch, 2 epochs
    assert run(tmp_path / "part", "train.max_steps=4").stop_reason == "max_steps"
    run(tmp_path / "part", resume=tmp_path / "part" / "jepa-latest.pth.tar")

    def losses(run_dir):
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        column = lines[0].split(",").index("loss")
        return [line.split(",")[column] for line in lines[1:]]

    assert losses(tmp_path / "part") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 12
