"""End to end: ``openjepa pretrain`` on a folder full of broken and odd image files trains to completion with
fixed batch shapes, and reports exactly the unreadable files once, with their reasons.

The folder (``make_messy_folder`` of test_bad_files) holds good photos plus: zero-byte, truncated JPEG and PNG, a
text file named .jpg, an unsupported TIFF compression, two decompression bombs, an unreadable (permission) file
and a broken symlink (all unreadable), and CMYK, palette, 16-bit, float, RGBA, grey, grey+alpha, 1-bit,
1x1-pixel and 1x2000 images (all readable: converted, never skipped).
"""

import csv
import re

from test_bad_files import messy  # noqa: F401 - the fixture
from test_train import TINY

from openjepa.cli.main import main as cli_main
from openjepa.train import trainer as trainer_module

# 36 files in batches of 4: 9 steps per epoch, no file dropped, so every file is drawn in every epoch.
FOLDER_RUN = ["data.dataset=folder", "data.max_samples=null", "data.batch_size=4", "data.num_workers=1",
              "optim.epochs=2"]
SUMMARY = re.compile(r"^(\d+) unreadable image files were skipped")


def listed_files(out: str) -> tuple[int, dict[str, str]]:
    """How many summaries ``out`` holds, and the ``path: reason`` lines of the (last) one."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if SUMMARY.match(line)]
    if not starts:
        return 0, {}
    listed = {}
    for line in lines[starts[-1] + 1:]:
        if not line.startswith("  ") or line.startswith("  ... and"):
            break
        path, reason = line.strip().split(": ", 1)
        listed[path] = reason
    assert int(SUMMARY.match(lines[starts[-1]]).group(1)) == len(listed)
    return len(starts), listed


def test_pretrain_on_a_messy_folder_completes_and_reports_bad_files_once(messy, tmp_path, capsys,  # noqa: F811
                                                                         monkeypatch):
    root, unreadable, _ = messy
    shapes = []
    real_step = trainer_module.accumulated_step

    def spy(model, optimizer, micro_batches, *args, **kwargs):
        for images, ctx, tgt in micro_batches:
            shapes.append((tuple(images.shape), ctx.shape[0], tgt.shape[1]))
        return real_step(model, optimizer, micro_batches, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "accumulated_step", spy)
    run = tmp_path / "run"
    overrides = [*TINY, *FOLDER_RUN, f"data.path={root}", f"train.out_dir={run}"]

    # Stopped part-way (the same report, for the files met so far), then resumed to the end.
    assert cli_main(["pretrain", *overrides, "train.max_steps=4"]) == 0
    out = capsys.readouterr().out
    count, listed = listed_files(out)
    assert count == 1 and set(listed) <= unreadable and "stopped at step 4" in out

    assert cli_main(["pretrain", f"--resume={run}", *overrides, "train.max_steps=null"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    count, listed = listed_files(captured.out)
    assert count == 1  # once, at the end, however often each file was met
    assert set(listed) == unreadable  # exactly the unreadable files: odd-but-readable ones are converted
    assert listed[str(root / "b" / "empty.jpg")] == "empty file (0 bytes)"
    assert listed[str(root / "b" / "text.jpg")] == "a text file, not an image"
    assert "broken symbolic link" in listed[str(root / "b" / "broken_link.jpg")]
    assert f"openjepa check-data {root}" in captured.out

    assert len(shapes) == 18  # 4 steps, then the 14 after the resume
    assert {s[0] for s in shapes} == {(4, 1, 16, 16)}  # unreadable samples were replaced: the batch stays full
    assert all(ctx == 4 and tgt == 4 for _, ctx, tgt in shapes)
    with open(run / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 19))

    # `openjepa check-data` lists the same files before any training.
    assert cli_main(["check-data", str(root), "--workers", "0", "--no-progress"]) == 0
    report = capsys.readouterr().out
    for path in unreadable:
        assert path in report
