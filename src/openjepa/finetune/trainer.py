"""The fine-tuning loop: a pretrained (or random) encoder plus a linear head, trained end to end on labelled
images, on CPU, one GPU or under torchrun (DDP).

The application shell is pretraining's: a YAML recipe with overrides, a progress bar, ``metrics.csv`` (every step)
and ``monitor.csv`` (every held-out evaluation), atomic checkpoints, exact ``--resume``, SIGTERM / Ctrl-C save,
``train.max_minutes`` / ``train.max_steps``. The model is chosen on held-out training images (the best held-out
top-1, ties to the lower held-out loss); the test split is scored once, with that model, when training ends.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from ..cpu_allocator import keep_freed_memory
from ..errors import UserError
from ..eval.features import extract_features
from ..eval.metrics import topk_hits
from ..eval.probe import linear_probe
from ..models.classifier import ViTClassifier, set_drop_path
from ..models.vit import VisionTransformer
from ..schedules import warmup_cosine
from ..train.metrics import METRICS_CSV, MONITOR_CSV, CsvLog
from ..train.runtime import Runtime, all_reduce_mean, any_process, barrier, setup_runtime, shutdown_runtime
from ..train.signals import StopRequest, shield_workers
from ..train.state import LATEST as PRETRAIN_LATEST
from ..train.state import Position, _rng_state, _set_rng_state, save_run_config
from .checkpoint import BEST, FINAL, LATEST, SPLITS, ClassifierInfo, classifier_record, is_finetune_checkpoint
from .config import FinetuneConfig, PretrainedEncoder, model_section
from .data import FinetuneData, build_finetune_data
from .head import FinetuneNet
from .optim import make_finetune_optimizer, set_lr

STATISTICS_IMAGES = 4096  # training images that measure the head norm's statistics before an evaluation
STEP_FIELDS = ("step", "epoch", "loss", "train_top1", "lr", "wd", "step_ms", "data_ms", "images_per_s")
DEFAULT_LICENSE = "Apache-2.0"  # weights trained from scratch by openjepa
PlotFn = Callable[[Path], Any]


class FinetuneDiverged(UserError):
    """The loss or the weights became NaN or infinite."""


@dataclass
class Scores:
    top1: float
    loss: float
    top5: float | None
    n: int


@dataclass
class FinetuneResult:
    """How a fine-tuning run ended and, when it completed, the test score of the chosen model."""

    run_dir: Path
    stop_reason: str  # completed | interrupted | time_limit | max_steps
    position: Position
    best: dict[str, Any] | None  # epoch, step, holdout_top1, holdout_loss of the chosen model
    top1: float | None = None  # test split, chosen model (None: not completed, or no test split)
    top5: float | None = None
    n_train: int = 0
    n_holdout: int = 0
    n_test: int = 0
    low_shot_indices: list[int] | None = None
    signal: int | None = None
    line: str | None = None

    @classmethod
    def from_final(cls, run_dir: str | Path) -> FinetuneResult:
        """The result of a completed run, read back from its ``final.json``."""
        record = json.loads((Path(run_dir) / FINAL).read_text())
        return cls(Path(run_dir), record["stop_reason"], Position(record["epochs"], 0, record["steps"]),
                   record["best"], record["top1"], record["top5"], record["n_train"], record["n_holdout"],
                   record["n_test"], record.get("low_shot_indices"), None, record["line"])

    def to_dict(self) -> dict[str, Any]:
        return {"method": "finetune", "top1": self.top1, "top5": self.top5, "best": self.best,
                "n_train": self.n_train, "n_holdout": self.n_holdout, "n_test": self.n_test,
                "stop_reason": self.stop_reason, "epochs": self.position.epoch, "steps": self.position.global_step,
                "run_dir": str(self.run_dir), "line": self.line}


@torch.no_grad()
def score_classifier(model: ViTClassifier | FinetuneNet, dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                     autocast_dtype: torch.dtype | None = None) -> Scores:
    """Top-1, mean cross-entropy (no label smoothing) and top-5 (more than 5 classes) of ``model`` on a dataset of
    ``(image, label)``; the model is put back in its previous mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0))
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    hits1, hits5, loss, n = 0, 0, 0.0, 0
    try:
        with autocast:
            for images, labels in loader:
                logits = model(images.to(device)).float()
                labels = torch.as_tensor(labels).long().to(device)
                loss += F.cross_entropy(logits, labels, reduction="sum").item()
                hits1 += int(topk_hits(logits, labels, 1).sum())
                hits5 += int(topk_hits(logits, labels, 5).sum())
                n += len(labels)
    finally:
        model.train(was_training)
    if n == 0:
        raise UserError("cannot score a classifier on an empty dataset")
    return Scores(hits1 / n, loss / n, hits5 / n if model.num_classes > 5 else None, n)


def prepare_run_dir(run_dir: Path, resume: Path | None, overwrite: bool, runtime: Runtime) -> None:
    """Refuse to mix two runs (or a fine-tuning and a pretraining run) in one folder; remove what an abandoned
    attempt left behind."""
    if (run_dir / PRETRAIN_LATEST).exists():
        raise UserError(f"{run_dir} holds a pretraining run; fine-tune into another folder (train.out_dir=PATH)")
    if resume is None and (run_dir / LATEST).exists() and not overwrite:
        raise UserError(f"{run_dir} already holds a fine-tuning run ({LATEST}). Pass --resume to continue it, "
                        f"--overwrite to start again in the same folder, or choose train.out_dir=PATH")
    if runtime.is_main:
        if resume is None:
            for name in (LATEST, BEST, FINAL, SPLITS, METRICS_CSV, MONITOR_CSV):
                (run_dir / name).unlink(missing_ok=True)
        for stray in run_dir.glob(".*.tmp"):  # writes a killed process never finished (the target is intact)
            stray.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(runtime)


def _random_encoder(cfg: FinetuneConfig) -> VisionTransformer:
    kwargs = cfg.model.encoder_kwargs()
    kwargs.pop("drop_path_rate")  # set by optim.drop_path
    try:
        return VisionTransformer(**kwargs)
    except ValueError as exc:
        raise UserError(f"the model settings do not describe a buildable encoder: {exc}") from exc


class FineTuner:
    """Builds a fine-tuning run from a :class:`FinetuneConfig` and runs it. Use :func:`openjepa.finetune.finetune`."""

    def __init__(self, cfg: FinetuneConfig, runtime: Runtime, pretrained: PretrainedEncoder | None = None,
                 resume: Path | None = None, overwrite: bool = False, plot: PlotFn | None = None):
        self.cfg, self.rt, self.plot = cfg, runtime, plot
        self.run_dir = Path(cfg.train.out_dir)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if runtime.device.type == "cpu":
            keep_freed_memory()
        state = self._read_resume(resume)
        prepare_run_dir(self.run_dir, resume, overwrite, runtime)
        torch.manual_seed(cfg.train.seed)  # the same head (and random encoder) on every process
        if state is not None:
            self.model = ViTClassifier.from_arch(state["arch"])
            self.info = ClassifierInfo(**state["info"])
            stats = (self.info.mean, self.info.std)
        else:
            encoder = copy.deepcopy(pretrained.encoder) if pretrained is not None else _random_encoder(cfg)
            stats = (pretrained.mean, pretrained.std) if pretrained is not None and pretrained.mean else None
        vit = self.model.encoder if state is not None else encoder
        self.data: FinetuneData = build_finetune_data(
            cfg, tuple(vit.patch_embed.img_size), vit.in_chans, stats, runtime.rank, runtime.world_size,
            self.run_dir, pin_memory=runtime.device.type == "cuda" and cfg.data.pin_memory)
        self._release_workers = shield_workers(self.data.loader)
        if state is None:
            self.model = ViTClassifier(encoder, self.data.num_classes)
            if pretrained is not None:
                self.cfg = cfg = dataclasses.replace(cfg, model=model_section(encoder))
            self.info = ClassifierInfo(
                list(self.data.classes) or [str(i) for i in range(self.data.num_classes)],
                list(self.data.mean), list(self.data.std),
                (pretrained.license if pretrained is not None else None) or DEFAULT_LICENSE,
                pretrained.source if pretrained is not None else "openjepa",
                (pretrained.origin or cfg.finetune.init) if pretrained is not None else None, cfg.data.dataset)
        elif self.model.num_classes != self.data.num_classes:
            raise CheckpointError(f"{resume} classifies {self.model.num_classes} classes but {cfg.data.dataset} "
                                  f"has {self.data.num_classes}")
        set_drop_path(self.model.encoder, cfg.optim.drop_path)
        self.model.encoder.set_grad_checkpointing(cfg.train.grad_checkpointing)
        self.train_net = FinetuneNet(self.model, cfg.finetune.head_norm).to(runtime.device)
        if cfg.finetune.head_norm:  # the head norm absorbs the final norm's per-channel scale and shift: their
            self.model.encoder.norm.requires_grad_(False)  # gradients are exactly 0, Adam would only walk noise
        self.optimizer = make_finetune_optimizer(self.model, cfg.optim.weight_decay, cfg.optim.layer_decay)
        self.scaler = torch.amp.GradScaler(runtime.device.type) if runtime.use_grad_scaler else None
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        self.warmup_steps = int(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.position = Position()
        self.best: dict[str, Any] | None = None
        self.probe_line: str | None = None
        if state is not None:
            self._restore(state, resume)
        else:
            if cfg.finetune.head_init == "probe" and runtime.is_main:  # DDP copies rank 0's weights to the others
                self._head_from_probe()
            torch.manual_seed(cfg.train.seed + 1 + runtime.rank)  # drop-path noise differs across processes
        self.net: torch.nn.Module = self.train_net
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.train_net, device_ids=ids)
        self.saved_step: int | None = self.position.global_step if state is not None else None
        resumed_at = self.position.global_step if state is not None else None
        if runtime.is_main:
            self.steps_log = CsvLog(self.run_dir / METRICS_CSV, STEP_FIELDS, keep_until=resumed_at)
            self.monitor_log = CsvLog(self.run_dir / MONITOR_CSV, keep_until=resumed_at)
            save_run_config(cfg, self.run_dir)  # type: ignore[arg-type]  # any config with to_yaml()
            (self.run_dir / SPLITS).write_text(json.dumps(self.data.splits.to_dict()) + "\n")

    # -- construction helpers --------------------------------------------------------------------------------------
    def _read_resume(self, resume: Path | None) -> dict[str, Any] | None:
        if resume is None:
            return None
        state = load_checkpoint(resume)
        if not is_finetune_checkpoint(state) or "opt" not in state or "net" not in state:
            raise CheckpointError(f"{resume} is not a fine-tuning training checkpoint ({LATEST} of a fine-tuning run "
                                  f"folder); to fine-tune a pretrained encoder, pass it as the init instead")
        return state

    def _restore(self, state: dict[str, Any], origin: Path) -> None:
        load_weights(self.train_net, state["net"], "classifier being trained")
        try:
            self.optimizer.load_state_dict(state["opt"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state in {origin} does not fit this model ({exc})") from exc
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state.get("rng"))
        self.position = Position(int(state["epoch"]), int(state["step_in_epoch"]), int(state["step"]))
        self.best = state.get("best")

    def _head_from_probe(self) -> None:
        """Start the head from a linear probe of the frozen encoder (LP-FT, Kumar et al. 2022): the probe of
        :func:`openjepa.eval.linear_probe` (standardised features, weight decay chosen on the held-out images),
        its standardisation in the head's batch norm (or folded into the head), so that fine-tuning starts from a
        working classifier instead of adapting the pretrained features to a random head."""
        f = self.cfg.finetune
        args = ("mean", f.eval_batch_size, self.rt.device, True)
        train = extract_features(self.model.encoder, self.data.train_eval, *args, desc="head init: train features")
        held = extract_features(self.model.encoder, self.data.holdout, *args, desc="head init: held-out features")
        probe = linear_probe(train, held, seed=self.cfg.train.seed, device=self.rt.device)
        self.train_net.start_from_probe(probe.classifier)
        self.probe_line = (f"head initialised from a linear probe of the frozen encoder: held-out top-1 "
                           f"{probe.top1:.3f} (wd={probe.weight_decay:.0e})")
        print(self.probe_line, flush=True)

    # -- the loop ----------------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        cfg, rt = self.cfg, self.rt
        self._print_header()
        bar = tqdm(total=self.total_steps, initial=self.position.global_step, disable=not rt.is_main, unit="step",
                   dynamic_ncols=True, desc="finetune")
        started, first_step = time.monotonic(), self.position.global_step
        stop = StopRequest()
        try:
            with stop:
                if self.position.global_step == 0 and self.best is None:
                    self._select(bar)  # the starting point is a candidate too (with head_init=probe: the probe)
                reason = self._should_stop(stop, started)
                while reason is None and self.position.epoch < cfg.optim.epochs:
                    reason = self._run_epoch(bar, stop, started)
                    if reason is not None:
                        break
                    self.position = Position(self.position.epoch + 1, 0, self.position.global_step)
                    self._end_of_epoch(bar)
            reason = reason or "completed"
            if reason != "completed" and (self.position.global_step > first_step or self.saved_step is None):
                self._save()
                self._draw()
        finally:
            self._release_workers()
            bar.close()
            error = sys.exc_info()[1]
            if rt.is_main:
                summary = self.data.bad_files.summary()
                if summary and summary not in (str(error) if error is not None else ""):
                    print(summary, flush=True)
        result = FinetuneResult(self.run_dir, reason, self.position, self.best, n_train=len(self.data.splits.train),
                                n_holdout=len(self.data.splits.holdout), signal=stop.signal,
                                low_shot_indices=None if self.data.splits.low_shot is None
                                else self.data.splits.low_shot.tolist())
        if reason == "completed":
            self._finish(result)
        return result

    def _run_epoch(self, bar, stop: StopRequest, started: float) -> str | None:
        self.data.set_epoch(self.position.epoch, self.position.step_in_epoch)
        tick = time.perf_counter()
        for images, labels in self.data.loader:
            data_ms = (time.perf_counter() - tick) * 1e3
            loss, top1 = self._step(images, labels)
            step_ms = (time.perf_counter() - tick) * 1e3 - data_ms
            pos = self.position
            self.position = Position(pos.epoch, pos.step_in_epoch + 1, pos.global_step + 1)
            self._log_step(bar, loss, top1, len(images), step_ms, data_ms)
            reason = self._should_stop(stop, started)
            if reason is not None:
                return reason
            tick = time.perf_counter()
        return None

    def lr_at(self, step: int) -> float:
        """Peak learning rate of ``step`` (0-based): linear warm-up from 0, cosine to ``optim.min_lr``."""
        o = self.cfg.optim
        return warmup_cosine(step, self.warmup_steps, self.total_steps, 0.0, o.lr, o.min_lr)

    def _autocast(self):
        dtype = self.rt.autocast_dtype
        return torch.autocast(self.rt.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        rt, o = self.rt, self.cfg.optim
        set_lr(self.optimizer, self.lr_at(self.position.global_step))
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        self.train_net.train()
        with self._autocast():
            logits = self.net(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=o.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        reported = float(all_reduce_mean(loss.detach(), rt))
        if not math.isfinite(reported):  # checked before the update: the weights stay those of the last step
            raise FinetuneDiverged(
                f"fine-tuning diverged: the loss is {reported} at step {self.position.global_step + 1}; nothing was "
                f"saved from this step. Lower optim.lr or set optim.grad_clip (e.g. 1.0), then continue with "
                f"`openjepa finetune --resume {self.run_dir}`")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        top1 = (logits.detach().argmax(1) == labels).float().mean().item()
        return reported, top1

    def _log_step(self, bar, loss: float, top1: float, batch: int, step_ms: float, data_ms: float) -> None:
        if not self.rt.is_main:
            return
        pos = self.position
        lr = self.lr_at(pos.global_step - 1)
        ips = batch * self.rt.world_size / max(1e-9, (step_ms + data_ms) / 1e3)
        self.steps_log.write({"step": pos.global_step, "epoch": pos.epoch + 1, "loss": loss, "train_top1": top1,
                              "lr": lr, "wd": self.cfg.optim.weight_decay, "step_ms": step_ms, "data_ms": data_ms,
                              "images_per_s": ips})
        bar.update(1)
        held = f" | held-out {self.best['holdout_top1']:.3f}" if self.best else ""
        bar.set_postfix_str(f"ep {pos.epoch + 1} loss {loss:.4f} lr {lr:.2e} {ips:.0f} img/s{held}", refresh=False)

    def _should_stop(self, stop: StopRequest, started: float) -> str | None:
        t = self.cfg.train
        if any_process(stop.requested, self.rt):
            return "interrupted"
        if t.max_steps is not None and self.position.global_step >= t.max_steps:
            return "max_steps"
        if t.max_minutes is not None and any_process((time.monotonic() - started) / 60 >= t.max_minutes, self.rt):
            return "time_limit"
        return None

    # -- epoch ends: model selection, checkpoints --------------------------------------------------------------------
    def _end_of_epoch(self, bar) -> None:
        epoch, last = self.position.epoch, self.position.epoch == self.cfg.optim.epochs
        if epoch % self.cfg.finetune.eval_every == 0 or last:
            self._select(bar)
        if epoch % max(1, self.cfg.train.checkpoint_every) == 0 or last:
            self._save()
            self._draw()

    def _precise_statistics(self) -> None:
        """The head norm's statistics measured on (at most ``STATISTICS_IMAGES``) training images, evaluation view,
        with the encoder as it is now."""
        if self.train_net.norm is None:
            return
        images = self.data.train_eval
        subset = Subset(images, range(min(len(images), STATISTICS_IMAGES)))
        features = extract_features(self.model.encoder, subset, "mean", self.cfg.finetune.eval_batch_size,
                                    self.rt.device, progress=False, autocast_dtype=self.rt.autocast_dtype)
        self.train_net.set_statistics(features.x.to(self.rt.device))

    def _select(self, bar) -> None:
        """Score the held-out images; keep the model when it is the best so far (process 0)."""
        if self.rt.is_main:
            if self.position.global_step > 0:  # at step 0 the statistics are the probe's own
                self._precise_statistics()
            scores = self.score(self.data.holdout)
            row = {"step": self.position.global_step, "epoch": self.position.epoch,
                   "holdout_top1": scores.top1, "holdout_loss": scores.loss}
            self.monitor_log.write(row)
            best = self.best
            if best is None or scores.top1 > best["holdout_top1"] or (
                    scores.top1 == best["holdout_top1"] and scores.loss < best["holdout_loss"]):
                self.best = {"epoch": self.position.epoch, "step": self.position.global_step,
                             "holdout_top1": scores.top1, "holdout_loss": scores.loss}
                self._write(BEST, self._record(with_training_state=False))
            bar.write(f"epoch {self.position.epoch}: held-out top-1 {scores.top1:.4f}, loss {scores.loss:.4f}"
                      f" (best {self.best['holdout_top1']:.4f} at epoch {self.best['epoch']})")
        barrier(self.rt)

    def score(self, dataset, model: ViTClassifier | FinetuneNet | None = None) -> Scores:
        """:func:`score_classifier` of ``model`` (default: the network being trained) on a dataset."""
        return score_classifier(model or self.train_net, dataset, self.cfg.finetune.eval_batch_size, self.rt.device,
                                self.rt.autocast_dtype)

    def _record(self, with_training_state: bool) -> dict[str, Any]:
        self.info.epoch = self.position.epoch
        record = classifier_record(self.train_net.folded(), self.info)  # the plain classifier it computes
        record.update(config=self.cfg.to_dict(), epoch=self.position.epoch, step=self.position.global_step,
                      best=self.best)
        if with_training_state:
            record.update(net=self.train_net.state_dict(), opt=self.optimizer.state_dict(),
                          scaler=self.scaler.state_dict() if self.scaler is not None else None,
                          step_in_epoch=self.position.step_in_epoch, rng=_rng_state())
        return record

    def _write(self, name: str, record: dict[str, Any]) -> None:
        bad = next((n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise FinetuneDiverged(f"fine-tuning diverged: {bad} holds NaN or inf after step "
                                   f"{self.position.global_step}, so {name} was not written. Lower optim.lr or set "
                                   f"optim.grad_clip, then continue with `openjepa finetune --resume {self.run_dir}`")
        save_checkpoint(record, self.run_dir / name)

    def _save(self) -> None:
        """Write the latest checkpoint (process 0); every process stops together if that fails."""
        error: Exception | None = None
        if self.rt.is_main:
            try:
                self._write(LATEST, self._record(with_training_state=True))
            except (CheckpointError, FinetuneDiverged) as exc:
                error = exc
        if any_process(error is not None, self.rt):
            raise error or UserError(f"stopping at step {self.position.global_step}: process 0 could not save the "
                                     f"checkpoint (its message says why)")
        self.saved_step = self.position.global_step

    def _draw(self) -> None:
        if self.rt.is_main and self.plot is not None:
            self.plot(self.run_dir)

    # -- the end: the chosen model on the test split ----------------------------------------------------------------
    def _finish(self, result: FinetuneResult) -> None:
        if self.rt.is_main:
            chosen = ViTClassifier.from_arch(self.model.arch())
            load_weights(chosen, load_checkpoint(self.run_dir / BEST)["model"], "classifier")
            chosen.to(self.rt.device)
            best = self.best or {}
            where = (f"best held-out top-1 {best.get('holdout_top1', float('nan')):.3f} at epoch "
                     f"{best.get('epoch')} of {self.cfg.optim.epochs}")
            sizes = f"{result.n_train} train / {result.n_holdout} held out"
            if self.data.test is not None:
                test = self.score(self.data.test, chosen)
                result.top1, result.top5, result.n_test = test.top1, test.top5, test.n
                top5 = f" top-5 {test.top5:.3f}" if test.top5 is not None else ""
                result.line = f"fine-tuned top-1 {test.top1:.3f}{top5} on the test split ({where}; {sizes} / " \
                              f"{test.n} test)"
            else:
                result.line = f"fine-tuned: {where} ({sizes}; the dataset has no test split)"
            record = {**result.to_dict(), "classes": self.info.classes, "init": self.info.init,
                      "low_shot": {"labels_per_class": self.cfg.finetune.labels_per_class,
                                   "fraction": self.cfg.finetune.label_fraction,
                                   "seed": self.cfg.finetune.draw_seed},
                      "low_shot_indices": result.low_shot_indices}
            (self.run_dir / FINAL).write_text(json.dumps(record, indent=2) + "\n")
        barrier(self.rt)

    def _print_header(self) -> None:
        if not self.rt.is_main:
            return
        enc, d, o = self.model.encoder, self.cfg.data, self.cfg.optim
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        start = f"from {self.info.init}" if self.info.init else "from random initialisation"
        low = ""
        if self.data.splits.low_shot is not None:
            low = f" ({len(self.data.splits.low_shot)} labelled: low-shot draw, seed {self.cfg.finetune.draw_seed})"
        print(f"openjepa finetune: ViT width {enc.embed_dim}, depth {enc.depth}, patch {enc.patch_size}, "
              f"{enc.patch_embed.img_size[0]}px, {params / 1e6:.2f}M params, {self.model.num_classes} classes, "
              f"{start}; {d.dataset}: {len(self.data.splits.train)} train / {len(self.data.splits.holdout)} held "
              f"out{low}; batch {d.batch_size} x {self.rt.world_size} process(es), {self.steps_per_epoch} steps/epoch"
              f" x {o.epochs} epochs, lr {o.lr:g} (layer decay {o.layer_decay:g}), {self.rt.describe()} -> "
              f"{self.run_dir}" + (f"; resuming at step {self.position.global_step}"
                                   if self.position.global_step else ""), flush=True)


def finetune(cfg: FinetuneConfig, pretrained: PretrainedEncoder | VisionTransformer | None = None,
             resume: str | Path | None = None, overwrite: bool = False, plot: PlotFn | None = None) -> FinetuneResult:
    """Fine-tune ``pretrained`` (a :class:`PretrainedEncoder`, a bare encoder, or None for a random encoder of
    ``cfg.model``) on ``cfg.data``; ``resume``: a fine-tuning checkpoint to continue exactly. ``plot``: called
    with the run folder after each checkpoint (e.g. ``openjepa.viz.save_run_plot`` for ``curves.png``).

    >>> from openjepa.interop import load_pretrained                                            # doctest: +SKIP
    >>> cfg = load_finetune_config("digits", ["train.out_dir=runs/digits-ft"])                   # doctest: +SKIP
    >>> result = finetune(cfg, load_pretrained("runs/digits"))                                   # doctest: +SKIP
    >>> print(result.line)                                                                       # doctest: +SKIP
    """
    if isinstance(pretrained, VisionTransformer):
        pretrained = PretrainedEncoder(pretrained)
    if pretrained is None and resume is None and cfg.finetune.init:
        raise UserError(f"finetune.init is {cfg.finetune.init!r} but no encoder was given: load it with "
                        f"openjepa.interop.load_pretrained({cfg.finetune.init!r}) and pass it, or use "
                        f"`openjepa finetune`, which does")
    runtime = setup_runtime(cfg.train.device, cfg.train.precision)
    try:
        return FineTuner(cfg, runtime, pretrained, Path(resume) if resume else None, overwrite, plot).run()
    finally:
        shutdown_runtime(runtime)
