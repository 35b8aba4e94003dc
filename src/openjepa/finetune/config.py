"""Fine-tuning settings: a YAML recipe (``configs/finetune/NAME.yaml``) plus dotted overrides, validated like the
pretraining config.

Sections: ``model`` (the architecture, used only when there is no pretrained encoder: random initialisation),
``data`` (the labelled dataset and its augmentation), ``optim`` (AdamW with layer-wise learning-rate decay, warm-up
+ cosine, drop-path, label smoothing), ``finetune`` (where the encoder comes from, the held-out split, low-shot),
``train`` (where and how the run executes; the same keys as pretraining's ``train`` section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Sections, apply_overrides, build_section, read_recipe, recipe_names
from ..config_sections import DataConfig, TrainConfig
from ..ijepa import ModelConfig
from ..models.vit import PRESETS, VisionTransformer

DEFAULT_RECIPE = "digits"
RECIPES = "finetune"  # configs/finetune/, shipped as openjepa.recipes/finetune/



@dataclass
class FinetuneOptimConfig:
    """AdamW with layer-wise learning-rate decay (block ``i`` of ``depth`` trains at ``lr * layer_decay ** (depth -
    i)``, the patch embedding at ``lr * layer_decay ** (depth + 1)``, the final norm and the head at ``lr``), linear
    warm-up from 0 then cosine decay to ``min_lr``, constant weight decay (not on biases, norms and position
    embeddings)."""

    epochs: int = 50
    lr: float = 1e-3  # peak learning rate of the head and the final norm
    min_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # 1.0: one learning rate for every layer
    drop_path: float = 0.1  # stochastic depth of the last block (linear from 0 at the first)
    label_smoothing: float = 0.1
    grad_clip: float | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"optim.lr must be > 0 and optim.min_lr in [0, lr], got {self.lr} and {self.min_lr}")
        if self.warmup_epochs < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_epochs and optim.weight_decay must be >= 0")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay must be in (0, 1] (1: no decay), got {self.layer_decay}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"optim.drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be > 0 (or null for none), got {self.grad_clip}")


@dataclass
class FinetuneSettings:
    """Where the encoder comes from and how the labelled training split is used."""

    init: str | None = None  # run folder, checkpoint, Hugging Face / openjepa / timm folder; None: random init
    which: str = "target"  # encoder of an I-JEPA checkpoint: target (EMA) or context
    head_init: str = "probe"  # probe: start from a linear probe of the frozen encoder (LP-FT); random: small random
    head_norm: bool = True  # the head reads batch-normalised features in training (folded into it when saved)
    augment: bool = True  # random resized crop (data.crop_scale, data.crop_ratio) + flip (data.hflip)
    holdout: float = 0.1  # fraction of the (low-shot) training images held out to choose the model
    labels_per_class: int | None = None  # low-shot: this many labelled training images of every class
    label_fraction: float | None = None  # low-shot: this fraction of every class (0.01: the paper's 1 %)
    draw_seed: int = 0  # seed of the low-shot draw
    eval_every: int = 1  # epochs between evaluations on the held-out images (the last epoch always)
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.head_init not in ("probe", "random"):
            raise ValueError(f"finetune.head_init must be probe or random, got {self.head_init!r}")
        if self.which not in ("target", "context"):
            raise ValueError(f"finetune.which must be target or context, got {self.which!r}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"finetune.holdout must be between 0 and 1 (e.g. 0.1), got {self.holdout}")
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise ValueError("set finetune.labels_per_class or finetune.label_fraction, not both")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ValueError(f"finetune.labels_per_class must be >= 1, got {self.labels_per_class}")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ValueError(f"finetune.label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.eval_every < 1 or self.eval_batch_size < 1:
            raise ValueError("finetune.eval_every and finetune.eval_batch_size must be >= 1")


def _finetune_data() -> DataConfig:
    return DataConfig(crop_scale=(0.35, 1.0), hflip=True)


def _finetune_train() -> TrainConfig:
    return TrainConfig(out_dir="runs/finetune")


@dataclass
class FinetuneConfig(Sections):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=_finetune_data)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    train: TrainConfig = field(default_factory=_finetune_train)


SHORT_RUN_EPOCHS = 2  # runs of at most this many epochs get the advice below


def short_run_advice(cfg: FinetuneConfig) -> str | None:
    """A note for a run of at most :data:`SHORT_RUN_EPOCHS` epochs that trains on augmented images, else None.
    Why: measured on Fashion-MNIST (docs/benchmarks.md, "Fine-tuning in one epoch"), one epoch on crops and flips
    ended below its starting point, one epoch without them, from a random head, was a real gain."""
    if cfg.optim.epochs > SHORT_RUN_EPOCHS or not cfg.finetune.augment:
        return None
    return (f"note: {cfg.optim.epochs} epoch(s) on augmented images. In runs this short the crops and flips can "
            f"cost more than they teach; on Fashion-MNIST one epoch did better with finetune.augment=false "
            f"optim.drop_path=0 finetune.head_init=random (docs/downstream.md, \"Short runs\")")


def model_section(encoder: VisionTransformer) -> ModelConfig:
    """The ``model`` section describing a given encoder (what a run folder's ``config.yaml`` records, so that its
    settings say which network was fine-tuned; the weights' own architecture is in the checkpoints)."""
    a = encoder.arch()
    preset = next((name for name, p in PRESETS.items() if (p.embed_dim, p.num_heads, p.mlp_ratio) ==
                   (a["embed_dim"], a["num_heads"], a["mlp_ratio"])), "vit_base")
    return ModelConfig(arch=preset, patch_size=a["patch_size"], img_size=a["img_size"][0], in_chans=a["in_chans"],
                       embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"])


# -- recipes -------------------------------------------------------------------------------------------------------
def finetune_recipe_names() -> list[str]:
    """Names of the fine-tuning recipes shipped with openjepa (``configs/finetune/*.yaml``)."""
    return recipe_names(RECIPES)


def finetune_config_from_dict(values: dict[str, Any]) -> FinetuneConfig:
    """Validate a nested dict (e.g. parsed YAML) into a :class:`FinetuneConfig`; missing keys take the defaults of
    :class:`FinetuneConfig` (whose ``data`` and ``train`` defaults differ from pretraining's)."""
    values = dict(values or {})
    for section, defaults in FinetuneConfig().to_dict().items():
        given = values.get(section)
        if isinstance(given, dict) or given is None:
            values[section] = {**defaults, **(given or {})}
    return build_section(FinetuneConfig, values)


def load_finetune_values(source: str | Path | None = None) -> dict[str, Any]:
    """The raw values of a recipe (name or path; default: the digits recipe)."""
    return read_recipe(source or DEFAULT_RECIPE, RECIPES)


def load_finetune_config(source: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a fine-tuning recipe (name or path; default: the digits recipe), apply ``section.key=value``
    overrides, validate.

    >>> cfg = load_finetune_config("digits", ["optim.epochs=5", "finetune.init=runs/digits"])  # doctest: +SKIP
    """
    return finetune_config_from_dict(apply_overrides(load_finetune_values(source), list(overrides or [])))
