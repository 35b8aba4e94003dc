"""Every command line in README.md and docs/*.md that runs openjepa (``openjepa ...``, ``python -m openjepa ...``,
``torchrun ... -m openjepa ...``) is found in the files' code blocks, parsed by the CLI's own parser and has its
settings validated; the cheap ones (those that need only the embedded digits data or a run folder) are run on a
tiny run. A command added to the docs is checked without editing this file; a placeholder that cannot be parsed
or run as written goes into PLACEHOLDERS below.

Which lines count: in a ```bash / ```sh / ```shell block every line (``\\`` continuations joined, comments dropped,
``&&`` / ``;`` / ``|`` separating commands); in a ```console or unlabelled block only the lines typed after ``$ ``
(the others are output). Python blocks are left to the Python API tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from openjepa.cli.main import main as cli_main
from openjepa.cli.main import parse_args
from openjepa.config import ConfigError, load_config, recipe_names
from openjepa.finetune import finetune_recipe_names, load_finetune_config
from test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell"}
TYPED_BLOCKS = {"console", "text", ""}  # only "$ " lines are commands

# Words of the docs that stand for something the reader supplies: what they become for parsing. A shell variable
# of a loop (`for p in fp32 bf16`) counts as one of these too.
PLACEHOLDERS = {
    "$p": "fp32",
    "KEY=VALUE...": None,  # "add your own overrides": dropped
    "my_recipe.yaml": "fashion_mnist",
    "PATH/TO/ijepa": "/nonexistent/ijepa",
}


def _blocks(text: str):
    for match in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        yield match.group(1).lower(), match.group(2)


def _split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in ("&&", ";", "|", "||", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def _openjepa_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after ``openjepa`` / ``-m openjepa``, or None for a command that is not openjepa's."""
    if tokens[0] == "openjepa":
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "openjepa":
            return tokens[i + 2:]
    return None


def documented_commands() -> list[tuple[str, list[str], str | None]]:
    """``(where, argv, error)`` for every openjepa command line of the docs, in order of appearance. ``error``: the
    message shown after a typed command whose next line is ``openjepa ...: error: MESSAGE`` (an example of a refused
    command), else None."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for lang, body in _blocks(text):
            if lang not in SHELL_BLOCKS | TYPED_BLOCKS:
                continue
            lines = [line.strip() for line in body.replace("\\\n", " ").splitlines()]
            for number, line in enumerate(lines):
                if lang in TYPED_BLOCKS:
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                following = lines[number + 1] if number + 1 < len(lines) else ""
                error = following.split(": error: ", 1)[1] if following.startswith("openjepa") and (
                    ": error: " in following) else None
                for tokens in _split_commands(line):
                    argv = _openjepa_argv(tokens)
                    if argv is not None:
                        where = f"{path.relative_to(ROOT)}: {' '.join(tokens)[:90]}"
                        found.append((where, _substitute(argv), error))
    return found


def _substitute(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        for word, value in PLACEHOLDERS.items():
            if word in arg:
                arg = None if value is None else arg.replace(word, value)
                if arg is None:
                    break
        if arg is not None:
            out.append(arg)
    return out


COMMANDS = documented_commands()


def test_the_docs_hold_the_commands_this_test_is_about():
    """The extraction itself: enough commands, from README and docs, of every kind the docs show."""
    assert len(COMMANDS) >= 40
    wheres = " ".join(w for w, _, _ in COMMANDS)
    assert "README.md" in wheres and "docs/training.md" in wheres
    subcommands = {argv[0] for _, argv, _ in COMMANDS if argv}
    assert subcommands >= {"pretrain", "eval", "embed", "export", "viz", "convert", "check-data", "make-shards"}
    assert any("torchrun" in w for w, _, _ in COMMANDS) and any("srun torchrun" in w for w, _, _ in COMMANDS)
    assert any(error for _, _, error in COMMANDS)  # the docs' examples of refused commands are found too


def _check_settings(args, subcommand: str) -> None:
    """The settings a command line gives (recipe plus dotted overrides) pass the validation of its config: the
    fine-tuning config for ``finetune``, the pretraining config otherwise."""
    config = getattr(args, "config", None)
    overrides = list(getattr(args, "overrides", None) or [])
    if config is None and not overrides:
        return
    names, load = (finetune_recipe_names(), load_finetune_config) if subcommand == "finetune" else (
        recipe_names(), load_config)
    if config is not None and config not in names:
        config = str(ROOT / config) if (ROOT / config).exists() else config
    load(config, overrides)


@pytest.mark.parametrize("where, argv, error", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_parses_with_valid_settings(where, argv, error):
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: the CLI refuses this command line (exit {exc.code})")
    assert getattr(args, "func", None) is not None, f"{where}: names no subcommand"
    if error is None:
        _check_settings(args, argv[0])
        return
    # an example of a refused command: a settings mistake is refused with the message the docs show (up to "...")
    try:
        _check_settings(args, argv[0])
    except ConfigError as exc:
        assert str(exc).startswith(error.split("...")[0].rstrip()), f"{where}: docs say {error!r}, got {exc}"


# -- running the cheap ones ------------------------------------------------------------------------------------------
RUN_FOLDER = re.compile(r"^runs/[\w.-]+(/jepa-latest\.pth\.tar)?$")
OUTPUT_FLAGS = {"--out"}


def _runnable(argv: list[str], run_dir: Path, tmp: Path) -> list[str] | None:
    """The command with its run folders pointed at a tiny run and its outputs at a temporary folder, or None when
    it needs something a test machine does not have (a dataset path, released weights, a cluster)."""
    out, skip_next = [], False
    subcommand = argv[:2] if argv and argv[0] in ("eval", "viz", "convert") else argv[:1]
    for i, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        if arg in OUTPUT_FLAGS and i + 1 < len(argv):
            out += [arg, str(tmp / Path(argv[i + 1]).name)]
            skip_next = True
        elif RUN_FOLDER.match(arg):
            out.append(str(run_dir / (Path(arg).name if arg.endswith(".pth.tar") else "")).rstrip("/"))
        elif arg.startswith(("/", "data.path=", "data.dataset=")) or arg.endswith((".pth.tar", ".npz", ".yaml")):
            return None  # a dataset, released weights or files of another command
        elif arg in ("-c", "--config") or (i and argv[i - 1] in ("-c", "--config") and arg != "digits"):
            return None  # recipes other than the embedded digits read datasets from disk
        else:
            out.append(arg)
    if subcommand == ["pretrain"]:
        return out + TINY + ["data.batch_size=16", "train.max_steps=2", f"train.out_dir={tmp / 'pretrain'}"]
    if subcommand in (["eval", "linear"], ["eval", "knn"], ["embed"], ["export"], ["viz", "features"], ["viz", "predictions"], ["viz", "run"]):
        return out
    return None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("docs") / "run"
    # depth 4: `--pool concat4` (the docs use it) needs four blocks
    assert cli_main(["pretrain", *TINY, "model.depth=4", "data.batch_size=16", f"train.out_dir={run}"]) == 0
    return run


def _run_signature(argv: list[str]) -> tuple:
    """Commands that differ only in paths run once: the subcommand and the options given."""
    return tuple(a for a in argv if a.startswith("-") or not ("/" in a or "." in a or "=" in a))


def test_cheap_documented_commands_run(tiny_run, tmp_path):
    ran, seen = [], set()
    for where, argv, error in COMMANDS:
        if error is not None:
            continue
        if argv[:2] == ["pretrain", "--resume"]:
            command = ["pretrain", "--resume", str(tiny_run)]  # the tiny run is complete: resuming adds no step
        else:
            command = _runnable(argv, tiny_run, tmp_path)
        if command is None or _run_signature(command) in seen:
            continue
        seen.add(_run_signature(command))
        assert cli_main(command) == 0, f"{where}: {' '.join(command)}"
        ran.append(command[:2])
    assert len(ran) >= 8, ran
    kinds = {tuple(c) for c in ran}
    assert {("eval", "linear"), ("eval", "knn"), ("viz", "features"), ("viz", "run")} <= kinds
