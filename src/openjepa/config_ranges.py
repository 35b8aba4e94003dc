"""The valid range of every numeric setting of a run, in one table, checked before anything is built.

:data:`RANGES` maps each dotted key (``optim.lr``) to a :class:`Bound`; :data:`RULES` holds the few checks that
involve two settings of a section (``optim.warmup_epochs <= optim.epochs``). Each section's dataclass calls
:func:`check_section` when it is constructed, so a value outside its range is refused with a message that names
the key and the range, whether it came from a YAML file, a command-line override or Python::

    optim.lr must be > 0, got -1

A new numeric setting needs a line here: ``tests/test_config_ranges.py`` walks every numeric field of
``RunConfig`` and fails for one without a bound. This module imports nothing from openjepa except the errors, so
that every section (``ijepa.ModelConfig``, ``masks.MaskConfig``, ``config_sections``) can use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

SCALAR, PAIR, LIST = "scalar", "pair", "list"


@dataclass(frozen=True)
class Bound:
    """``low`` / ``high`` (None: unbounded on that side), each inclusive unless ``*_open``; every value must also
    be finite. ``shape``: one number, an increasing pair ``[a, b]`` (``a <= b``), or a non-empty list. ``null``
    (None) is accepted wherever the field's type allows it; ``note`` says what it means."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    shape: str = SCALAR
    note: str = ""

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def rule(self) -> str:
        """The range in words: ``> 0``, ``>= 1``, ``within (0, 1]``, ``a finite number``."""
        if self.low is not None and self.high is not None:
            return (f"within {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "a finite number"

    def describe(self) -> str:
        """What the whole value must be, as the error message says it."""
        rule = self.rule()
        if self.shape == PAIR:
            text = f"an increasing pair [a, b] (a <= b) of values {rule}"
        elif self.shape == LIST:
            text = f"a non-empty list of values {rule}"
        else:
            text = rule
        return f"{text} ({self.note})" if self.note else text

    def valid(self, value: Any) -> bool:
        if self.shape == SCALAR:
            return self.contains(value)
        values = list(value)
        if not values or not all(self.contains(v) for v in values):
            return False
        return self.shape != PAIR or (len(values) == 2 and values[0] <= values[1])

    def first_invalid(self, integer: bool) -> Any:
        """The first value just outside the range (what the tests feed in)."""
        if self.low is not None:
            bad = self.low if self.low_open else self.low - 1
            bad = int(bad) if integer else float(bad)
        elif self.high is not None:
            bad = self.high if self.high_open else self.high + 1
            bad = int(bad) if integer else float(bad)
        else:
            bad = float("nan")
        if self.shape == SCALAR:
            return bad
        good = self.high if self.high is not None and not self.high_open else (self.low or 0) + 1
        return [bad, good] if self.shape == PAIR else [good, bad]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return _number(value)


def at_least(low: float, note: str = "", shape: str = SCALAR) -> Bound:
    return Bound(low=low, note=note, shape=shape)


def above(low: float, note: str = "", shape: str = SCALAR) -> Bound:
    return Bound(low=low, low_open=True, note=note, shape=shape)


def within(low: float, high: float, low_open: bool = False, high_open: bool = False, note: str = "",
           shape: str = SCALAR) -> Bound:
    return Bound(low, high, low_open, high_open, shape, note)


FRACTION = within(0, 1, low_open=True)  # (0, 1]: a share of an image or a grid
FINITE = Bound()

RANGES: dict[str, Bound] = {
    # model (openjepa.ijepa.ModelConfig); that img_size is a multiple of patch_size is checked before training
    "model.patch_size": at_least(1),
    "model.img_size": at_least(1),
    "model.in_chans": at_least(1),
    "model.embed_dim": at_least(1, "or null for the preset's"),
    "model.depth": at_least(1, "or null for the preset's"),
    "model.num_heads": at_least(1, "or null for the preset's"),
    "model.pred_depth": at_least(1),
    "model.pred_emb_dim": at_least(1),
    "model.pred_num_heads": at_least(1, "or null for the encoder's"),
    "model.drop_path_rate": within(0, 1, high_open=True),
    "model.patch_embed_gain": above(0, "or null for the paper's initialisation"),
    "model.regularizer_weight": at_least(0, "0: off, as model.regularizer=none"),
    "model.regularizer_fade": within(0, 1, low_open=True, note="or null for a constant weight"),
    # mask (openjepa.masks.MaskConfig); what a given patch grid can hold is checked by the sampler
    "mask.num_targets": at_least(1),
    "mask.target_scale": within(0, 1, low_open=True, shape=PAIR),
    "mask.target_aspect_ratio": above(0, shape=PAIR),
    "mask.context_scale": within(0, 1, low_open=True, shape=PAIR),
    "mask.context_aspect_ratio": above(0, shape=PAIR),
    "mask.min_keep": at_least(1),
    "mask.max_tries": at_least(1),
    # data (openjepa.config_sections.DataConfig)
    "data.batch_size": at_least(1, "per process"),
    "data.num_workers": at_least(0, "or null for automatic"),
    "data.crop_scale": within(0, 1, low_open=True, shape=PAIR),
    "data.crop_ratio": above(0, shape=PAIR),
    "data.mean": Bound(shape=LIST, note="or null for the dataset's statistics"),
    "data.std": above(0, "or null for the dataset's statistics", shape=LIST),
    "data.max_samples": at_least(1, "or null for all"),
    "data.eval_crop": FRACTION,
    "data.shuffle_buffer": at_least(1, "1: no shuffling"),
    "data.global_batch": at_least(1, "or null: data.batch_size x processes x optim.accum_steps"),
    # optim (openjepa.config_sections.OptimConfig)
    "optim.epochs": at_least(1),
    "optim.lr": above(0),
    "optim.start_lr": at_least(0),
    "optim.final_lr": at_least(0),
    "optim.warmup_epochs": at_least(0, "and <= optim.epochs"),
    "optim.weight_decay": at_least(0),
    "optim.final_weight_decay": at_least(0),
    "optim.ema": within(0, 1, shape=PAIR, note="start and end momentum"),
    "optim.ipe_scale": above(0),
    "optim.grad_clip": above(0, "or null for no clipping"),
    "optim.accum_steps": at_least(1, "or null: 1, or what data.global_batch implies"),
    # train (openjepa.config_sections.TrainConfig)
    "train.seed": at_least(0),
    "train.checkpoint_every": at_least(1, "epochs"),
    "train.keep_every": at_least(0, "0: keep only the latest"),
    "train.log_every": at_least(1, "steps"),
    "train.progress_seconds": at_least(0, "0: a line at every step"),
    "train.max_minutes": at_least(0, "0: stop before the first step; or null for no limit"),
    "train.max_steps": at_least(1, "or null for no limit"),
    "train.skip_nonfinite": at_least(0),
    "train.threads": at_least(1, "or null for torch's default"),
    "train.checkpoint_minutes": above(0, "or null: at epoch ends only"),
    "train.stop_grace_seconds": at_least(0, "or null: no limit"),
    # eval (openjepa.config_sections.EvalConfig)
    "eval.online_every": at_least(0, "0: never"),
    "eval.online_train_samples": at_least(1),
    "eval.online_test_samples": at_least(1),
    "eval.final_train_samples": at_least(1, "or null for all"),
    "eval.final_test_samples": at_least(1, "or null for all"),
    "eval.knn_k": at_least(1),
    "eval.knn_temperature": above(0),
    "eval.probe_holdout": within(0, 1, low_open=True, high_open=True),
    "eval.probe_weight_decays": at_least(0, shape=LIST),
    "eval.probe_max_iter": at_least(1),
    "eval.collapse_min_rank": at_least(0),
    "eval.collapse_min_std": at_least(0),
    "eval.decline_warning_points": at_least(0),
    "eval.seed": at_least(0),
    "eval.batch_size": at_least(1),
}


def _warmup_within_epochs(optim: Any) -> str | None:
    if optim.warmup_epochs > optim.epochs:
        return (f"optim.warmup_epochs must be within [0, optim.epochs] = [0, {optim.epochs}], got "
                f"{_number(optim.warmup_epochs)}")
    return None


def _mean_and_std_together(data: Any) -> str | None:
    if (data.mean is None) != (data.std is None):
        return "set both data.mean and data.std, or neither (to use the dataset's statistics)"
    if data.mean is not None and len(data.mean) != len(data.std):
        return (f"data.mean and data.std must be lists of the same length (one value per channel), got "
                f"{_shown(data.mean)} and {_shown(data.std)}")
    return None


# Checks that involve two settings of one section: section -> [(keys involved, check returning a message)].
RULES: dict[str, list[tuple[tuple[str, ...], Callable[[Any], str | None]]]] = {
    "optim": [(("optim.warmup_epochs", "optim.epochs"), _warmup_within_epochs)],
    "data": [(("data.mean", "data.std"), _mean_and_std_together)],
}


def check_value(key: str, value: Any, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` naming ``key`` and its range when ``value`` (not None) lies outside it."""
    bound = RANGES[key]
    if value is None or bound.valid(value):
        return
    raise error(f"{key} must be {bound.describe()}, got {_shown(value)}")


def check_section(section: Any, name: str, error: type[Exception] = ConfigError) -> None:
    """Check every setting of the section object ``section`` (``name``: ``optim``, ``mask``...) against
    :data:`RANGES`, then the section's :data:`RULES`."""
    prefix = f"{name}."
    for key in RANGES:
        if key.startswith(prefix):
            check_value(key, getattr(section, key[len(prefix):]), error)
    for _keys, rule in RULES.get(name, []):
        message = rule(section)
        if message:
            raise error(message)
