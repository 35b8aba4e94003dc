"""Empty or wrong inputs end, before any training, with a one-paragraph message that says what is wrong and how
to fix it: exit status 1, no traceback unless ``--debug``, no run folder filled with half a run."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from crash_harness import child_env
from test_train import TINY

from openjepa.cli.main import main as cli_main


def cli_error(capsys, argv: list[str], command: str = "pretrain") -> str:
    """Run the CLI in this process; it must fail with exit status 1 and end with one ``openjepa COMMAND: error:``
    line (a progress bar may come before it on stderr), and print no traceback. Returns that line."""
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"openjepa {command}: error: ")
    return last


def pretrain_args(run_dir, *extra: str) -> list[str]:
    return ["pretrain", *TINY, "data.batch_size=16", f"train.out_dir={run_dir}", *extra]


def _images(folder, count: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")


CASES = {
    # name: (overrides, words the message must hold)
    "empty folder": (["data.dataset=folder", "data.path={empty}"], ["no images found in", "searched all sub-folders"]),
    "missing path": (["data.dataset=folder", "data.path={tmp}/nowhere"], ["does not exist", "check the spelling"]),
    "file, not folder": (["data.dataset=folder", "data.path={file}"], ["is a file", "expects a folder"]),
    "no path": (["data.dataset=folder"], ["needs data.path"]),
    "fewer images than a batch": (["data.dataset=folder", "data.path={five}"],
                                  ["has 5 images, fewer than one global batch", "lower data.batch_size to at most 5"]),
    "max_samples below a batch": (["data.max_samples=10"], ["fewer than one global batch", "raise data.max_samples"]),
    "image size vs patch size": (["model.img_size=15"], ["model.img_size=15 is not a multiple of model.patch_size=2",
                                                          "model.img_size=14 or 16"]),
    "zero patch size": (["model.patch_size=0"], ["model.patch_size must be >= 1, got 0"]),
    "negative learning rate": (["optim.lr=-1"], ["optim.lr must be > 0, got -1"]),
    "min_keep above the grid": (["mask.min_keep=100"], ["8x8 patch grid holds at most 64 patches",
                                                        "lower mask.min_keep"]),
    "targets cover everything": (["mask.num_targets=4", "mask.target_scale=[0.9,1.0]"],
                                 ["could not leave min_keep=4 context patches", "lower mask.min_keep"]),
    "reversed range": (["mask.target_scale=[0.9,0.2]"], ["target_scale must be an increasing pair"]),
    "heads do not divide width": (["model.num_heads=5"], ["width 32 is not divisible by 5 heads", "model.num_heads"]),
    "unknown key": (["optim.learning_rate=1e-3"], ["unknown key 'optim.learning_rate'", "valid keys:"]),
    "misspelt key": (["optim.lrr=1e-3"], ["did you mean 'optim.lr'?"]),
    "unknown section": (["optimizer.lr=1e-3"], ["unknown key 'optimizer'"]),
    "text for a number": (["optim.lr=fast"], ["optim.lr must be a number, got 'fast'"]),
    "fraction for an integer": (["data.batch_size=2.5"], ["data.batch_size must be an integer, got 2.5"]),
    "number for a boolean": (["data.hflip=3"], ["data.hflip must be true or false, got 3"]),
    "scalar for a pair": (["data.crop_scale=0.5"], ["data.crop_scale must be a list like [a, b]"]),
    "bad choice": (["data.dataset=imagenet"], ["data.dataset must be one of"]),
    "value for a section": (["optim=3"], ["'optim' must be a mapping"]),
    "not key=value": (["optim.lr"], ["must look like section.key=value"]),
    "unknown recipe": (["-c", "fashion_mnst"], ["no config file or recipe named 'fashion_mnst'",
                                                  "did you mean fashion_mnist?"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_input_is_one_paragraph_before_training(case, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder")
    _images(tmp_path / "five", 5)
    overrides, words = CASES[case]
    names = {"empty": tmp_path / "empty", "tmp": tmp_path, "file": tmp_path / "notes.txt", "five": tmp_path / "five"}
    run = tmp_path / "run"
    message = cli_error(capsys, pretrain_args(run, *(o.format(**names) for o in overrides)))
    for word in words:
        assert word in message, message
    assert not (run / "metrics.csv").exists() and not (run / "jepa-latest.pth.tar").exists()  # nothing trained


def test_debug_shows_the_traceback_in_either_position(tmp_path, capsys):
    for argv in (["--debug", *pretrain_args(tmp_path, "model.img_size=15")],
                 [*pretrain_args(tmp_path, "model.img_size=15"), "--debug"]):
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "openjepa.errors.UserError" in err
        assert err.strip().splitlines()[-1].startswith("openjepa pretrain: error: model.img_size=15")


def test_the_installed_command_exits_nonzero_without_traceback(tmp_path):
    """The same through a real process: the exit status a shell or a job scheduler sees."""
    proc = subprocess.run([sys.executable, "-m", "openjepa", *pretrain_args(tmp_path / "run", "optim.lrr=1")],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert "\n" not in err and proc.stdout == ""  # one line, nothing else: no header, no progress bar
    assert err.startswith("openjepa pretrain: error: unknown key 'optim.lrr' in section 'optim'; did you mean "
                          "'optim.lr'? (valid keys: ")


def test_folder_of_only_unreadable_files_is_one_paragraph_even_from_a_worker(tmp_path, capsys):
    """Nothing to train on: the loader gives up with the list of files. Raised inside a DataLoader worker, the
    error reaches the CLI wrapped in the worker's traceback; the message shown is the original one."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(20):
        (bad / f"{i}.jpg").write_text("not an image\n")
    assert cli_main(pretrain_args(tmp_path / "run", "data.dataset=folder", f"data.path={bad}",
                                  "data.num_workers=1")) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Caught DataError" not in err
    message = err[err.index("openjepa pretrain: error: "):]
    assert "samples in a row were unreadable" in message and "openjepa check-data" in message
    assert f"{bad / '0.jpg'}: a text file, not an image" in message
    assert (out + err).count("20 unreadable image files") == 1  # the error carries the list: not printed again

