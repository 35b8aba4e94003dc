"""The settings sections of a run that belong to the floors above the core: ``data``, ``optim``, ``train`` and
``eval`` (``model`` is :class:`openjepa.ijepa.ModelConfig`, ``mask`` :class:`openjepa.masks.MaskConfig`).

They live here, below :mod:`openjepa.config` which assembles them into a :class:`~openjepa.config.RunConfig`, so
that reading a config never imports the data pipeline, the trainer or the evaluation code.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config_ranges import check_section

DATASETS = ("digits", "folder", "shards", "idx", "mnist", "fashion_mnist", "cifar10", "cifar100")


@dataclass
class DataConfig:
    """Where the images come from and how training views are made.

    ``dataset``: ``digits`` (embedded, scikit-learn's 8x8 digits upscaled), ``folder`` (any directory tree of
    images; labels from first-level sub-folders when there are any), ``shards`` (tar shards: a folder written by
    ``openjepa make-shards``, or patterns such as ``/data/train-{000..127}.tar``, globs, or a list of those),
    ``idx`` / ``mnist`` / ``fashion_mnist`` (IDX files, gz or raw), ``cifar10`` / ``cifar100`` (the python batches). All read from local paths only.
    """

    dataset: str = "digits"
    path: str | tuple[str, ...] | None = None  # None: the dataset's default location (fashion_mnist: Debian's)
    batch_size: int = 64  # per process and micro-batch; the global batch is batch_size x processes x accum_steps
    # The global batch of a step; set, it fixes optim.accum_steps = global_batch / (batch_size x processes), so a
    # recipe keeps its global batch (and learning rate) on any number of processes. None: batch_size x processes
    # x optim.accum_steps.
    global_batch: int | None = None
    num_workers: int | None = None  # None: chosen from the dataset and the machine
    crop_scale: tuple[float, float] = (0.3, 1.0)  # RandomResizedCrop area range (the released recipe's)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: bool = False
    mean: tuple[float, ...] | None = None  # None: the dataset's own statistics (ImageNet's for folders)
    std: tuple[float, ...] | None = None
    # Train on N samples only (quick trials): a fixed random subset (the same for every seed and run), so that a
    # folder sorted by class does not shrink to its first classes.
    max_samples: int | None = None
    pin_memory: bool = True  # only takes effect on CUDA
    eval_crop: float = 1.0  # evaluation keeps this fraction of the shorter side (0.875: the usual ImageNet crop)
    shuffle_buffer: int = 1000  # shards: samples each loader worker holds to shuffle the order it reads them in

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if isinstance(self.path, (list, tuple)) and self.dataset != "shards":
            raise ValueError(f"data.path is a list, which only data.dataset=shards accepts; give one path for "
                             f"data.dataset={self.dataset}")
        check_section(self, "data")


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
    # Micro-batches of data.batch_size accumulated per optimizer step (one schedule step, one EMA update each).
    # None: 1, or what data.global_batch implies.
    accum_steps: int | None = None

    def __post_init__(self):
        check_section(self, "optim")


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
    checkpoint_every: int = 1  # epochs between rewrites of jepa-latest.pth.tar (the last epoch always writes it)
    checkpoint_minutes: float | None = None  # also rewrite it mid-epoch once this many minutes passed since the last
    keep_every: int = 0  # also keep a numbered copy, jepa-epN.pth.tar, every N epochs (0: latest only)
    log_every: int = 10  # steps between updates of the progress bar's mean loss (on a terminal)
    progress_seconds: float = 30.0  # without a terminal (CI, nohup, SLURM): seconds between plain progress lines
    tensorboard: bool = False
    max_minutes: float | None = None  # stop cleanly (with a checkpoint) after this much wall-clock time
    # With max_minutes: re-plan the run's length from the measured step time as it goes, so that the LR, WD and
    # EMA schedules end at the deadline instead of being cut short by it (epochs / max_steps: the first guess).
    fit_to_deadline: bool = False
    # After SIGTERM/SIGINT: seconds (from the stop request) the run waits for its last checkpoint to be written
    # before exiting without it (the previous one stays). torchrun SIGKILLs its workers 30 s after SIGTERM by
    # default (--shutdown-timeout); null: wait however long the write takes.
    stop_grace_seconds: float | None = 25.0
    max_steps: int | None = None  # stop cleanly after this many steps (schedules still span all epochs)
    skip_nonfinite: int = 0  # skip up to N batches whose loss is NaN/inf before stopping the run
    threads: int | None = None  # CPU threads for torch (None: torch's default)

    def __post_init__(self):
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"train.device must be one of {DEVICES} or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_section(self, "train")


METHODS = ("knn", "linear")
POOLS = ("mean", "concat4")


@dataclass
class EvalConfig:
    """How representations are evaluated (see docs/evaluation.md for the exact protocols)."""

    online_every: int = 1  # epochs between online monitor runs (0: never)
    online_method: str = "knn"  # knn or linear
    online_train_samples: int = 2000  # labelled subset the monitor fits on
    online_test_samples: int = 1000  # and evaluates on
    final_probe: bool = True  # at the end of pretraining: linear probe of the target encoder vs random init
    final_train_samples: int | None = None  # cap on the final probe's training images (None: all)
    final_test_samples: int | None = None  # cap on its test images (None: all)
    pool: str = "mean"  # mean: average-pooled last layer; concat4: the last 4 layers' pooled outputs
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_holdout: float = 0.1  # fraction of the TRAINING features held out to choose the weight decay
    probe_weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the L2 sweep
    probe_max_iter: int = 300  # L-BFGS iterations per fit
    collapse_min_rank: float = 2.0  # warn when RankMe (centred) falls below this many effective directions
    collapse_min_std: float = 1e-4  # warn when feature_std * sqrt(dims) < this (1: isotropic; 0: collapsed)
    decline_warning_points: float | None = 3.0  # warn when the monitor's top-1 falls this far below the run's best
    seed: int = 0  # subsets, held-out split and random-init baseline
    batch_size: int = 256  # feature-extraction batch size

    def __post_init__(self):
        if self.online_method not in METHODS:
            raise ValueError(f"eval.online_method must be one of {METHODS}, got {self.online_method!r}")
        if self.pool not in POOLS:
            raise ValueError(f"eval.pool must be one of {POOLS}, got {self.pool!r}")
        check_section(self, "eval")
