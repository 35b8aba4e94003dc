"""Run configuration: dataclasses <-> YAML, dotted command-line overrides, validation with suggestions.

A run is described by :class:`RunConfig` (sections ``model``, ``mask``, ``data``, ``optim``, ``train``,
``eval``). ``load_config("fashion_mnist", ["optim.lr=5e-4"])`` reads a recipe by name or path, applies overrides
and validates every key and value; mistakes raise :class:`ConfigError` naming the key and the closest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_sections import DataConfig, EvalConfig, OptimConfig, TrainConfig
from .errors import ConfigError
from .ijepa import ModelConfig
from .masks import MaskConfig

DEFAULT_RECIPE = "digits"

__all__ = [  # ConfigError is defined in openjepa.errors and re-exported here, where it has always been importable
    "DEFAULT_RECIPE", "ConfigError", "RunConfig", "Sections", "accumulation_steps", "apply_overrides",
    "build_section", "from_dict", "load_config", "read_recipe", "recipe_names",
]


class Sections:
    """A config made of dataclass sections (:class:`RunConfig`, the fine-tuning config): as a plain dict and YAML."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists): what goes to YAML and into checkpoints."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class RunConfig(Sections):
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- settings derived from several sections -----------------------------------------------------------------------
def accumulation_steps(config: RunConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: ``optim.accum_steps``, or what ``data.global_batch`` implies for this
    number of processes (``global_batch / (data.batch_size x processes)``); a :class:`ConfigError` naming the numbers
    when that is not a whole number or when both settings are given and disagree."""
    batch, wanted, accum = config.data.batch_size, config.data.global_batch, config.optim.accum_steps
    per_step = batch * world_size  # images of one micro-batch on every process together
    sizes = f"data.batch_size x processes = {batch} x {world_size} = {per_step}"
    if wanted is None:
        return accum or 1
    if accum is not None:
        if per_step * accum != wanted:
            raise ConfigError(
                f"data.global_batch={wanted} and optim.accum_steps={accum} disagree: {sizes}, times {accum} "
                f"micro-batches makes {per_step * accum}. Set only one of them (data.global_batch keeps the global "
                f"batch whatever the number of processes; optim.accum_steps=null derives the accumulation from it)"
            )
        return accum
    if wanted % per_step:
        raise ConfigError(
            f"data.global_batch={wanted} is not a whole number of micro-batches: {sizes} images per micro-batch, "
            f"and {wanted} / {per_step} = {wanted / per_step:.4g}. {_batch_advice(wanted, batch, world_size)}"
        )
    return wanted // per_step


def _batch_advice(wanted: int, batch: int, world_size: int) -> str:
    """How to reach ``wanted`` images per step with ``world_size`` processes, or what comes closest."""
    per_step = batch * world_size
    lower, higher = wanted // per_step * per_step, (wanted // per_step + 1) * per_step
    nearest = " or ".join(str(g) for g in (lower, higher) if g > 0)
    if wanted % world_size == 0:
        per_process = wanted // world_size
        fits = max(d for d in range(1, min(batch, per_process) + 1) if per_process % d == 0)
        count = per_process // fits
        return (f"Use data.batch_size={fits} ({count} micro-batch{'es' if count > 1 else ''} per step), or "
                f"data.global_batch={nearest}")
    return (f"{wanted} images cannot be split evenly over {world_size} processes: use another number of processes, "
            f"or data.global_batch={nearest}")


# -- value checking -----------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, str, bool, tuples, optionals) and convert."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list like [a, b], got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    section, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.5)
    where = f"section '{section}'" if section else "the configuration"
    hint = f"; did you mean {' or '.join(repr(f'{section}.{c}' if section else c) for c in close)}?" if close else ""
    return ConfigError(f"unknown key '{key}' in {where}{hint} (valid keys: {', '.join(valid)})")


def build_section(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """The dataclass ``cls`` from a nested dict, every key and value checked (``prefix``: where it sits, for
    messages); nested dataclass fields are built the same way."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix}' must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(f"{prefix}.{key}" if prefix else str(key), list(fields))
        full = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = build_section(hints[key], value or {}, full)
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a message that names its key (config_ranges) needs no preamble
        message = str(exc) if str(exc).startswith(f"{prefix}.") else f"invalid '{prefix}' settings: {exc}"
        raise ConfigError(message) from exc


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Validate a nested dict (e.g. parsed YAML) into a :class:`RunConfig`; missing keys take defaults."""
    return build_section(RunConfig, values or {})


# -- files and overrides ------------------------------------------------------------------------------------------
def _recipes(folder: str | None):
    root = importlib.resources.files("openjepa.recipes")
    return root / folder if folder else root


def recipe_names(folder: str | None = None) -> list[str]:
    """Names of the recipes shipped with openjepa: the YAML files of ``configs/`` (pretraining), or of
    ``configs/FOLDER`` (``finetune``: the fine-tuning recipes)."""
    return sorted(p.name[:-5] for p in _recipes(folder).iterdir() if p.name.endswith(".yaml"))


def read_recipe(source: str | Path, folder: str | None = None) -> dict[str, Any]:
    """The raw values of a YAML file, or of the shipped recipe of that name (in ``configs/FOLDER`` when given)."""
    path = Path(source)
    if not path.suffix and not path.exists():
        candidate = _recipes(folder) / f"{source}.yaml"
        if not candidate.is_file():
            names = recipe_names(folder)
            close = difflib.get_close_matches(str(source), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            kind = f"{folder} recipe" if folder else "recipe"
            raise ConfigError(f"no config file or {kind} named {source!r}{hint} (recipes: {', '.join(names)})")
        text = candidate.read_text()
    elif not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    else:
        text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML: ``5e-4``, ``[0.2, 1.0]``, ``null``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=5e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
        node[parts[-1]] = value
    return values


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe (name or path; default: the embedded digits recipe), apply overrides, validate."""
    values = read_recipe(source or DEFAULT_RECIPE)
    return from_dict(apply_overrides(values, list(overrides or [])))
