"""Every numeric setting has a declared range (openjepa/config_ranges.py), and a value outside it is refused when the
settings are read, with a message naming the key and the range. The walk over RunConfig's fields makes a new
numeric setting without a bound fail here."""

import dataclasses
import math
import types
import typing

import pytest

from openjepa.config import ConfigError, RunConfig, load_config
from openjepa.config_ranges import PAIR, RANGES
from openjepa.config_sections import DataConfig, OptimConfig
from openjepa.errors import MaskSamplingError
from openjepa.ijepa import ModelConfig
from openjepa.masks import MaskConfig


def _leaf_types(tp) -> set:
    """The scalar types an annotation admits: int | None -> {int}, tuple[float, float] -> {float}."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, tuple):
        return set().union(*(_leaf_types(a) for a in typing.get_args(tp) if a is not Ellipsis))
    return {tp}


def numeric_fields(cls=RunConfig, prefix=""):
    """``{dotted key: is_integer}`` for every field of ``cls`` (recursively) that holds numbers."""
    found = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            found.update(numeric_fields(tp, key + "."))
        elif _leaf_types(tp) & {int, float}:
            found[key] = float not in _leaf_types(tp)
    return found


NUMERIC = numeric_fields()


def test_the_walk_finds_every_section():
    sections = {key.split(".")[0] for key in NUMERIC}
    assert sections == {f.name for f in dataclasses.fields(RunConfig)}
    assert NUMERIC["optim.lr"] is False and NUMERIC["data.batch_size"] is True and "train.compile" not in NUMERIC


def test_every_numeric_setting_has_a_bound_and_every_bound_a_setting():
    missing = sorted(set(NUMERIC) - set(RANGES))
    assert not missing, f"numeric settings without a range in openjepa/config_ranges.py RANGES: {missing}"
    stale = sorted(set(RANGES) - set(NUMERIC))
    assert not stale, f"RANGES entries for settings that do not exist: {stale}"


def yaml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    return repr(value)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_the_first_value_outside_each_range_is_refused_naming_key_and_range(key):
    bound = RANGES[key]
    bad = bound.first_invalid(integer=NUMERIC[key])
    with pytest.raises(ConfigError) as info:
        load_config("digits", [f"{key}={yaml_value(bad)}"])
    message = str(info.value)
    assert message.startswith(f"{key} must be "), message
    assert bound.rule() in message and "got " in message, message


@pytest.mark.parametrize("key", sorted(RANGES))
def test_defaults_and_recipes_lie_within_the_ranges(key):
    section, leaf = key.split(".")
    value = getattr(getattr(RunConfig(), section), leaf)
    assert value is None or RANGES[key].valid(value)


@pytest.mark.parametrize("override, accepted", [
    ("optim.lr=-1", False), ("optim.lr=0", False), ("optim.lr=1e-9", True),
    ("optim.weight_decay=0", True), ("optim.weight_decay=-0.01", False),
    ("optim.start_lr=0", True),
    ("optim.ema=[0.996, 1.0]", True), ("optim.ema=[1.0, 1.0]", True), ("optim.ema=[0.9, 1.01]", False),
    ("optim.ema=[1.0, 0.996]", False),  # start > end
    ("mask.target_scale=[0.2, 0.2]", True), ("mask.target_scale=[0.3, 0.2]", False),
    ("mask.context_scale=[0.85, 1.0]", True), ("mask.context_scale=[0.85, 1.01]", False),
    ("mask.target_scale=[0.0, 0.2]", False),
    ("optim.epochs=4", True), ("optim.epochs=0", False),
    ("optim.warmup_epochs=0", True), ("optim.warmup_epochs=40", True), ("optim.warmup_epochs=40.5", False),
    ("data.batch_size=0", False), ("eval.batch_size=0", False), ("eval.probe_holdout=1", False),
    ("model.drop_path_rate=0.99", True), ("model.drop_path_rate=1", False),
    ("optim.lr=.inf", False), ("optim.grad_clip=null", True), ("optim.grad_clip=0", False),
    ("eval.probe_weight_decays=[]", False), ("data.std=[0.5]", False), ("data.mean=[0.5]", False),
])
def test_boundaries_and_cross_field_rules(override, accepted):
    overrides = ["optim.epochs=40", override]  # the digits recipe's warm-up is 4 epochs
    if accepted:
        load_config("digits", overrides)
    else:
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config("digits", overrides)


def test_messages_read_as_documented():
    with pytest.raises(ConfigError) as info:
        load_config("digits", ["optim.lr=-1"])
    assert str(info.value) == "optim.lr must be > 0, got -1"
    with pytest.raises(ConfigError) as info:
        load_config("digits", ["optim.warmup_epochs=50"])
    assert str(info.value) == "optim.warmup_epochs must be within [0, optim.epochs] = [0, 40], got 50"
    with pytest.raises(ConfigError) as info:
        load_config("digits", ["mask.target_scale=[0.3, 0.2]"])
    assert str(info.value) == ("mask.target_scale must be an increasing pair [a, b] (a <= b) of values within "
                               "(0, 1], got [0.3, 0.2]")


def test_constructing_a_section_in_python_checks_the_same_ranges():
    """The dataclasses check their own values: the library refuses what the command line refuses."""
    with pytest.raises(ValueError, match=r"optim\.lr must be > 0"):
        OptimConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"data\.batch_size must be >= 1"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"model\.patch_size must be >= 1"):
        ModelConfig(patch_size=0)
    with pytest.raises(MaskSamplingError, match=r"mask\.min_keep must be >= 1"):
        MaskConfig(min_keep=0)


def test_pairs_in_the_table_are_pairs_in_the_config():
    hints = {key: NUMERIC[key] for key, bound in RANGES.items() if bound.shape == PAIR}
    for key in hints:
        section, leaf = key.split(".")
        assert len(getattr(getattr(RunConfig(), section), leaf)) == 2, key
