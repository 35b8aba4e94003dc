"""Optimisation and run settings."""

from __future__ import annotations

from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up + cosine LR, cosine weight decay and a linear EMA ramp (released defaults)."""

    epochs: int = 300
    lr: float = 1e-3
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_epochs: float = 40
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: tuple[float, float] = (0.996, 1.0)
    ipe_scale: float = 1.0  # stretch the schedules to ipe_scale x the training length, as the released code can
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    """Where and how the run executes."""

    out_dir: str = "runs/ijepa"
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else mps, else cpu
    precision: str = "auto"  # auto: measured on CPU (bf16 if >= 1.3x fp32); GPU bf16 if native, else fp16
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    selective_recompute: bool = False  # recompute only LayerNorm/GELU outputs in backward: ~1/3 less activations
    checkpoint_every: int = 1  # epochs between numbered checkpoints (latest is refreshed every epoch)
    keep_every: int = 0  # keep a numbered checkpoint every N epochs (0: latest only)
    log_every: int = 10  # steps between progress-bar refreshes of the running means
    tensorboard: bool = False
    max_minutes: float | None = None  # stop cleanly (with a checkpoint) after this much wall-clock time
    max_steps: int | None = None  # stop cleanly after this many steps (schedules still span all epochs)
    skip_nonfinite: int = 0  # skip up to N batches whose loss is NaN/inf before stopping the run
    threads: int | None = None  # CPU threads for torch (None: torch's default)

    def __post_init__(self):
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"train.device must be one of {DEVICES} or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
