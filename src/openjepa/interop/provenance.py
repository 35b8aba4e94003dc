"""Where exported weights come from: licence, input normalisation, training-config hash."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..checkpoint import NORMALISATION_KEY, OFFICIAL_LICENSE, OPENJEPA_LICENSE, is_official_checkpoint
from ..data.stats import IMAGENET_MEAN, IMAGENET_STD, adapt_stats
from ..errors import UserError

# Datasets whose default normalisation is ImageNet's (see openjepa.config_sections.DataConfig); the others use
# statistics measured on the data, which only the trainer knows (it records them as ``normalization``).
IMAGENET_STATS_DATASETS = ("folder", "cifar10", "cifar100")


@dataclass
class ExportInfo:
    """What an export records besides the weights.

    ``mean`` / ``std``: the per-channel input normalisation used in training (on 0..1 pixels), ``None`` when
    unknown; ``license``: of the weights (``Apache-2.0`` for weights trained with openjepa, ``CC-BY-NC-4.0`` for
    the released I-JEPA weights and anything trained from them); ``source``: ``openjepa``, ``official``,
    ``huggingface`` or ``timm``; ``which``: ``target`` or ``context`` encoder; ``config_sha256``: hash of the
    training config (``None`` when there is none).
    """

    mean: list[float] | None = None
    std: list[float] | None = None
    license: str | None = OPENJEPA_LICENSE
    source: str = "openjepa"
    which: str = "target"
    config_sha256: str | None = None
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys): equal configs give equal hashes across runs."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _imagenet_stats(channels: int) -> tuple[list[float], list[float]]:
    mean, std = adapt_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    return list(mean), list(std)


def _pair(values: Mapping[str, Any] | None) -> tuple[list[float], list[float]] | None:
    if isinstance(values, Mapping) and values.get("mean") is not None and values.get("std") is not None:
        return [float(v) for v in values["mean"]], [float(v) for v in values["std"]]
    return None


def normalisation_of(state: Mapping[str, Any], channels: int) -> tuple[list[float] | None, list[float] | None]:
    """The normalisation a checkpoint's weights were trained with: the config's ``data.mean``/``data.std``, else
    the statistics the trainer recorded (``normalization``), else the dataset's documented default (ImageNet's
    for released weights, folders and CIFAR); ``(None, None)`` with a warning when it cannot be known."""
    config = state.get("config") if isinstance(state.get("config"), Mapping) else {}
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    found = _pair(data) or _pair(state.get(NORMALISATION_KEY))
    if found:
        return found
    if is_official_checkpoint(state) or data.get("dataset") in IMAGENET_STATS_DATASETS:
        return _imagenet_stats(channels)
    warnings.warn(
        "the checkpoint does not record the input normalisation used in training (data.mean/std unset and no "
        "'normalization' entry); the export records mean/std as null (give them with --mean/--std, or "
        "ExportInfo(mean=..., std=...))",
        stacklevel=3,
    )
    return None, None


def info_from_checkpoint(
    state: Mapping[str, Any],
    which: str,
    channels: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ExportInfo:
    """Licence, normalisation, source and config hash of a training checkpoint (openjepa's or a released one).
    ``mean``/``std`` given by the caller replace the normalisation the checkpoint records."""
    official = is_official_checkpoint(state)
    check_stats(mean, std, channels)
    if mean is not None:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    else:
        mean, std = normalisation_of(state, channels)
    config = state.get("config")
    data = config.get("data", {}) if isinstance(config, Mapping) else {}
    default_license = OFFICIAL_LICENSE if official else OPENJEPA_LICENSE
    return ExportInfo(
        mean=mean,
        std=std,
        license=state.get("license", default_license),
        source=state.get("source", "official" if official else "openjepa"),
        which=which,
        config_sha256=config_hash(config) if isinstance(config, Mapping) and not official else None,
        dataset="imagenet" if official else (data.get("dataset") if isinstance(data, Mapping) else None),
    )


def check_stats(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int) -> None:
    """Mean and std given together, one value per input channel, positive stds."""
    if (mean is None) != (std is None):
        raise UserError("give both mean and std, or neither")
    if mean is not None and (len(mean) != channels or len(std) != channels or min(std) <= 0):
        raise UserError(f"mean and std need {channels} values each (one per input channel, std > 0); got "
                        f"{list(mean)} and {list(std)}")


def model_card(info: ExportInfo, library: str, usage: str, title: str | None = None, about: str | None = None,
               tags: Sequence[str] = ()) -> str:
    """A README.md whose metadata header states the licence (the hub shows it; tools read it). ``title`` and
    ``about`` (default: an exported encoder's) and extra ``tags`` describe other models (a fine-tuned classifier)."""
    license_line = f"license: {info.license.lower()}\n" if info.license else ""
    tag_lines = "".join(f"- {tag}\n" for tag in ("i-jepa", "openjepa", *tags))
    title = title or f"I-JEPA {info.which} encoder"
    about = about or (f"Exported by openjepa from {info.source} weights"
                      f"{' trained on ' + info.dataset if info.dataset else ''}.")
    return (
        f"---\n{license_line}library_name: {library}\ntags:\n{tag_lines}---\n\n# {title}\n\n{about} "
        f"Licence: {info.license or 'unknown'}.\n\n```python\n{usage}\n```\n"
    )
