"""The dataset flags shared by several subcommands: which dataset to read (``--data``, ``--data-path``, ``--split``) on
top of the data settings of a run or recipe."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config_sections import DATASETS, DataConfig
from ..errors import UserError

DATA_HELP = (
    f"a dataset name ({', '.join(DATASETS)}) or a folder of images (class sub-folders optional); default: the "
    f"dataset of the run or recipe"
)


def add_data_arguments(parser: argparse.ArgumentParser, split: str | None = "test") -> None:
    """``--data NAME_OR_FOLDER``, ``--data-path PATH`` and, unless ``split`` is None, ``--split``."""
    parser.add_argument("--data", metavar="NAME_OR_FOLDER", default=None, help=DATA_HELP)
    parser.add_argument("--data-path", metavar="PATH", default=None,
                        help="where the files of the named dataset are (data.path), e.g. a folder of CIFAR-10 "
                             "batches; default: the dataset's usual location")
    if split is not None:
        parser.add_argument("--split", choices=("train", "test"), default=split,
                            help=f"which split to read (default: {split})")


def data_config_from_args(args: argparse.Namespace, base: DataConfig) -> DataConfig:
    """``base`` (a run's data settings) pointed at the dataset named by ``--data`` / ``--data-path``.

    The normalisation settings of ``base`` are kept: explicit ``data.mean``/``data.std`` are what the model was
    trained with; when they are unset each dataset uses its own statistics, as in training.
    """
    name, path = getattr(args, "data", None), getattr(args, "data_path", None)
    if name is None and path is None:
        return base
    changes: dict = {"path": path}
    if name is None:
        changes["dataset"] = base.dataset
    elif name in DATASETS:
        changes["dataset"] = name
    elif Path(name).is_dir():
        if path is not None:
            raise UserError(f"--data {name} is a folder already; drop --data-path (it is for named datasets)")
        changes.update(dataset="folder", path=name)
    elif Path(name).exists():
        raise UserError(f"--data {name} is a file; pass a folder of images or a dataset name ({', '.join(DATASETS)})")
    else:
        raise UserError(f"--data {name!r} is neither a dataset name ({', '.join(DATASETS)}) nor an existing folder")
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
