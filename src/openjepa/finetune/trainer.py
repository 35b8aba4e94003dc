"""The fine-tuning loop: a pretrained (or random) encoder plus a linear head, trained end to end on labelled
images, on CPU, one GPU or under torchrun (DDP).

It runs in pretraining's application shell (:mod:`openjepa.train`): the runtime (device, precision, torchrun), the
stop signals, the progress display, the run log (``metrics.csv`` every step, ``monitor.csv`` every held-out
evaluation, optional TensorBoard), the run folder's operations, atomic checkpoints, exact ``--resume``, one host
sync per step, ``train.max_minutes`` / ``train.max_steps``. ``FineTuner(cfg, runtime, ...)`` builds everything
and writes nothing; :meth:`FineTuner.run` trains::

    held-out score of the starting point (with finetune.head_init=probe: a linear probe of the frozen encoder)
    for epoch:
        for batch:
            lr = warm-up + cosine at this step               layer-wise decayed per parameter group
            forward, backward; one host sync: loss, top-1, stop request, deadline
            log the step; stop if a stop reason came up
        held-out score (keep the best model), checkpoint, curves.png
    the chosen model on the test split, once

The model is chosen on held-out training images (the best held-out top-1, ties to the lower held-out loss); the
test split is scored once, with that model, when training ends.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from ..checkpoint import OPENJEPA_LICENSE, CheckpointError, save_checkpoint
from ..cpu_allocator import keep_freed_memory
from ..errors import UserError
from ..eval.accuracy import topk_hits
from ..eval.features import extract_features
from ..eval.probe import linear_probe
from ..models.classifier import ViTClassifier, set_drop_path
from ..models.pos_embed import to_2tuple
from ..models.vit import VisionTransformer
from ..pretrained import ClassifierInfo, PretrainedEncoder, read_classifier
from ..run_folder import (
    CURVES_PNG,
    FINAL_JSON,
    FINETUNE_BEST,
    FINETUNE_CHECKPOINTS,
    FINETUNE_LATEST,
    SPLITS_JSON,
    checkpoint_in,
    clear_earlier_run,
    refuse_to_mix_runs,
    remove_unfinished_writes,
    save_run_config,
)
from ..schedules import warmup_cosine
from ..speed_probe import ProbeShapes, encoder_probe_shapes
from ..train.checkpoints import Position, first_non_finite
from ..train.progress import Progress
from ..train.run_log import RunLog
from ..train.runtime import Runtime, barrier, exchange, on_process_0, setup_runtime, shutdown_runtime
from ..train.shell import loop_shell
from ..train.stopping import COMPLETED, limit_reached, past_deadline, stop_reason
from ..viz.run import save_run_plot
from .checkpoints import finetune_state, read_resume_state, restore_finetune_state
from .config import FinetuneConfig, model_section, short_run_advice
from .data import FinetuneData, build_finetune_data
from .head import FinetuneNet
from .optim import make_finetune_optimizer, set_lr

STATISTICS_IMAGES = 4096  # training images that measure the head norm's statistics before an evaluation
STEP_FIELDS = ("step", "epoch", "loss", "train_top1", "lr", "wd", "step_ms", "data_ms", "images_per_s")


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
        record = json.loads((Path(run_dir) / FINAL_JSON).read_text())
        return cls(Path(run_dir), record["stop_reason"], Position(record["epochs"], 0, record["steps"]),
                   record["best"], record["top1"], record["top5"], record["n_train"], record["n_holdout"],
                   record["n_test"], record.get("low_shot_indices"), None, record["line"])

    def to_dict(self) -> dict[str, Any]:
        return {"method": "finetune", "top1": self.top1, "top5": self.top5, "best": self.best,
                "n_train": self.n_train, "n_holdout": self.n_holdout, "n_test": self.n_test,
                "stop_reason": self.stop_reason, "epochs": self.position.epoch, "steps": self.position.global_step,
                "run_dir": str(self.run_dir), "line": self.line}


@torch.no_grad()
def score_classifier(model: ViTClassifier | FinetuneNet, dataset, batch_size: int = 256,
                     device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None) -> Scores:
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


def _random_encoder(cfg: FinetuneConfig) -> VisionTransformer:
    kwargs = cfg.model.encoder_kwargs()
    kwargs.pop("drop_path_rate")  # set by optim.drop_path
    try:
        return VisionTransformer(**kwargs)
    except ValueError as exc:
        raise UserError(f"the model settings do not describe a buildable encoder: {exc}") from exc


class FineTuner:
    """Everything a fine-tuning run needs, built from a :class:`FinetuneConfig` without writing any file;
    :meth:`run` trains. Use :func:`openjepa.finetune.finetune`."""

    def __init__(self, cfg: FinetuneConfig, runtime: Runtime, pretrained: PretrainedEncoder | None = None,
                 resume: Path | None = None, overwrite: bool = False):
        self.cfg, self.rt, self.resume, self.overwrite = cfg, runtime, resume, overwrite
        self.run_dir = Path(cfg.train.out_dir)
        if cfg.train.fit_to_deadline:  # the model is chosen at epoch ends: a length re-planned mid-epoch does not fit
            raise UserError("train.fit_to_deadline is a pretraining setting; fine-tuning chooses its model at the "
                            "ends of whole epochs: set optim.epochs to what fits (train.max_minutes stops the run)")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if runtime.device.type == "cpu":
            keep_freed_memory()
        refuse_to_mix_runs(self.run_dir, resume, overwrite, FINETUNE_LATEST)
        state = read_resume_state(resume) if resume is not None else None
        torch.manual_seed(cfg.train.seed)  # the same head (and random encoder) on every process
        if state is not None:
            self.model, self.info = ViTClassifier.from_arch(state["arch"]), ClassifierInfo(**state["info"])
            encoder, stats = self.model.encoder, (self.info.mean, self.info.std)
        else:
            encoder = copy.deepcopy(pretrained.encoder) if pretrained is not None else _random_encoder(cfg)
            stats = (pretrained.mean, pretrained.std) if pretrained is not None and pretrained.mean else None
        self.data: FinetuneData = build_finetune_data(
            cfg, tuple(encoder.patch_embed.img_size), encoder.in_chans, stats, runtime.rank, runtime.world_size,
            self.run_dir, runtime.device)
        if state is None:
            self.model = ViTClassifier(encoder, self.data.num_classes)
            if pretrained is not None:
                self.cfg = cfg = dataclasses.replace(cfg, model=model_section(encoder))
            self.info = self._classifier_info(pretrained)
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
        self.position, self.best = Position(), None
        if state is not None:
            self.position, self.best = restore_finetune_state(state, resume, self.train_net, self.optimizer,
                                                              self.scaler)
        self.saved_step: int | None = self.position.global_step if state is not None else None
        self.net: torch.nn.Module = self.train_net  # DDP-wrapped by run(), once the head is set
        self.log: RunLog | None = None  # opened by run(), on process 0
        self.stop_flags = [False, False]  # [stop requested, deadline passed] on any process, as of the last step

    def _classifier_info(self, pretrained: PretrainedEncoder | None) -> ClassifierInfo:
        d = self.data
        return ClassifierInfo(
            list(d.classes) or [str(i) for i in range(d.num_classes)], list(d.mean), list(d.std),
            (pretrained.license if pretrained is not None else None) or OPENJEPA_LICENSE,
            pretrained.source if pretrained is not None else "openjepa",
            (pretrained.origin or self.cfg.finetune.init) if pretrained is not None else None, self.cfg.data.dataset)

    # -- the loop ------------------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        cfg, rt = self.cfg, self.rt
        self._open_run_dir()
        self._print_header()
        self._start()
        self.progress = Progress(self.total_steps, self.position.global_step, cfg.optim.epochs, rt.is_main,
                                 cfg.train.log_every, cfg.train.progress_seconds, desc="finetune")
        self.started = time.monotonic()
        first_step = self.position.global_step
        reason = limit_reached(cfg.train, self.position.global_step)  # a run resumed at its limit takes no step
        with loop_shell(self.data.loader, self.progress, self.log, self.data.bad_files, rt) as self.stop:
            if self.position.global_step == 0 and self.best is None:
                self._select()  # the starting point is a candidate too (with head_init=probe: the probe)
            while reason is None and self.position.epoch < cfg.optim.epochs:
                self.data.set_epoch(self.position.epoch, self.position.step_in_epoch)
                tick = time.perf_counter()
                for images, labels in self.data.loader:
                    data_ms = (time.perf_counter() - tick) * 1e3
                    loss, top1 = self._step(images, labels)
                    step_ms = (time.perf_counter() - tick) * 1e3 - data_ms
                    self.position = self.position.after_step()
                    self._log_step(loss, top1, len(images), step_ms, data_ms)
                    reason = stop_reason(self.stop_flags, cfg.train, self.position.global_step,
                                         self.stop.requested and not rt.distributed)
                    if reason is not None:
                        break
                    tick = time.perf_counter()
                else:
                    self.position = self.position.after_epoch()
                    self._end_of_epoch()
            reason = reason or COMPLETED
            if reason != COMPLETED and (self.position.global_step > first_step or self.saved_step is None):
                self._save()
                self._plot()
        splits = self.data.splits
        result = FinetuneResult(self.run_dir, reason, self.position, self.best, n_train=len(splits.train),
                                n_holdout=len(splits.holdout), signal=self.stop.signal,
                                low_shot_indices=None if splits.low_shot is None else splits.low_shot.tolist())
        if reason == COMPLETED:
            self._finish(result)
        return result

    def _open_run_dir(self) -> None:
        """Clear what an earlier attempt left behind, write ``config.yaml`` and ``splits.json`` and open the logs
        (process 0); the other processes wait for it."""
        if self.rt.is_main:
            if self.resume is None:  # past refuse_to_mix_runs: any fine-tuning files here are being replaced, or
                # belong to an attempt that never saved its latest checkpoint
                clear_earlier_run(self.run_dir, overwrite=True, checkpoints=FINETUNE_CHECKPOINTS)
            remove_unfinished_writes(self.run_dir)
            save_run_config(self.cfg, self.run_dir, self.rt.precision_note())
            (self.run_dir / SPLITS_JSON).write_text(json.dumps(self.data.splits.to_dict()) + "\n")
            resume_step = self.position.global_step if self.resume is not None else None
            self.log = RunLog(self.run_dir, resume_step, self.cfg.train.tensorboard, step_fields=STEP_FIELDS)
        barrier(self.rt)

    def _start(self) -> None:
        """A fresh run: the head (from a linear probe on process 0), drop-path noise that differs across processes;
        then the DDP wrapper, which gives every process process 0's weights."""
        if self.resume is None:
            if self.cfg.finetune.head_init == "probe" and self.rt.is_main:
                self._head_from_probe()
            torch.manual_seed(self.cfg.train.seed + 1 + self.rt.rank)
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.train_net, device_ids=ids)

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
        print(f"head initialised from a linear probe of the frozen encoder: held-out top-1 {probe.top1:.3f} "
              f"(wd={probe.weight_decay:.0e})", flush=True)

    def lr_at(self, step: int) -> float:
        """Peak learning rate of ``step`` (0-based): linear warm-up from 0, cosine to ``optim.min_lr``."""
        o = self.cfg.optim
        return warmup_cosine(step, self.warmup_steps, self.total_steps, 0.0, o.lr, o.min_lr)

    def _autocast(self):
        dtype = self.rt.autocast_dtype
        return torch.autocast(self.rt.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One optimisation step; its loss and top-1 (means over processes), read with the stop request and the
        deadline in the step's one host sync."""
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
        top1 = (logits.detach().argmax(1) == labels).float().mean()
        late = past_deadline(self.started, self.cfg.train.max_minutes)
        (loss_value, top1_value), self.stop_flags = exchange(torch.stack([loss.detach(), top1]),
                                                             (self.stop.requested, late), rt)
        if not math.isfinite(loss_value):  # checked before the update: the weights stay those of the last step
            raise FinetuneDiverged(
                f"fine-tuning diverged: the loss is {loss_value} at step {self.position.global_step + 1}; nothing "
                f"was saved from this step. Lower optim.lr or set optim.grad_clip (e.g. 1.0), then continue with "
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
        return loss_value, top1_value

    def _log_step(self, loss: float, top1: float, batch: int, step_ms: float, data_ms: float) -> None:
        if not self.rt.is_main:
            return
        pos = self.position
        lr = self.lr_at(pos.global_step - 1)
        ips = batch * self.rt.world_size / max(1e-9, (step_ms + data_ms) / 1e3)
        self.log.step({"step": pos.global_step, "epoch": pos.epoch + 1, "loss": loss, "train_top1": top1, "lr": lr,
                       "wd": self.cfg.optim.weight_decay, "step_ms": step_ms, "data_ms": data_ms,
                       "images_per_s": ips})
        self.progress.update(pos.global_step, pos.epoch, loss, lr, ips)

    # -- epoch ends: model selection, checkpoints --------------------------------------------------------------------
    def _end_of_epoch(self) -> None:
        epoch, last = self.position.epoch, self.position.epoch == self.cfg.optim.epochs
        if epoch % self.cfg.finetune.eval_every == 0 or last:
            self._select()
        if epoch % max(1, self.cfg.train.checkpoint_every) == 0 or last:
            self._save()
            self._plot()

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

    def _select(self) -> None:
        """Score the held-out images; keep the model when it is the best so far (process 0)."""
        if self.rt.is_main:
            if self.position.global_step > 0:  # at step 0 the statistics are the probe's own
                self._precise_statistics()
            scores = self.score(self.data.holdout)
            self.log.monitored({"step": self.position.global_step, "epoch": self.position.epoch,
                                "holdout_top1": scores.top1, "holdout_loss": scores.loss})
            best = self.best
            if best is None or scores.top1 > best["holdout_top1"] or (
                    scores.top1 == best["holdout_top1"] and scores.loss < best["holdout_loss"]):
                self.best = {"epoch": self.position.epoch, "step": self.position.global_step,
                             "holdout_top1": scores.top1, "holdout_loss": scores.loss}
                self._write(FINETUNE_BEST, with_training_state=False)
            self.progress.write(f"epoch {self.position.epoch}: held-out top-1 {scores.top1:.4f}, loss "
                                f"{scores.loss:.4f} (best {self.best['holdout_top1']:.4f} at epoch "
                                f"{self.best['epoch']})")
        barrier(self.rt)

    def score(self, dataset, model: ViTClassifier | FinetuneNet | None = None) -> Scores:
        """:func:`score_classifier` of ``model`` (default: the network being trained) on a dataset."""
        return score_classifier(model or self.train_net, dataset, self.cfg.finetune.eval_batch_size, self.rt.device,
                                self.rt.autocast_dtype)

    def _write(self, name: str, with_training_state: bool) -> None:
        bad = first_non_finite(self.model)
        if bad is not None:  # a NaN/inf update slipped past a finite loss: never let it replace a good checkpoint
            raise FinetuneDiverged(f"fine-tuning diverged: {bad} holds NaN or inf after step "
                                   f"{self.position.global_step}, so {name} was not written. Lower optim.lr or set "
                                   f"optim.grad_clip, then continue with `openjepa finetune --resume {self.run_dir}`")
        training = (self.optimizer, self.scaler) if with_training_state else ()
        save_checkpoint(finetune_state(self.train_net, self.info, self.position, self.cfg.to_dict(), self.best,
                                       *training), self.run_dir / name)

    def _save(self) -> None:
        """Write the latest checkpoint (process 0); every process stops together if that fails."""
        on_process_0(lambda: self._write(FINETUNE_LATEST, with_training_state=True), self.rt,
                     (CheckpointError, FinetuneDiverged), f"stopping at step {self.position.global_step}: process 0 "
                     f"could not save the checkpoint (its message says why)")
        self.saved_step = self.position.global_step

    def _plot(self) -> None:
        """Refresh ``curves.png`` (process 0; a picture that cannot be drawn never stops training)."""
        if self.rt.is_main:
            save_run_plot(self.run_dir, self.run_dir / CURVES_PNG)

    # -- the end: the chosen model on the test split ----------------------------------------------------------------
    def _finish(self, result: FinetuneResult) -> None:
        if self.rt.is_main:
            chosen = read_classifier(self.run_dir / FINETUNE_BEST)[0].to(self.rt.device)
            best = self.best or {}
            where = (f"best held-out top-1 {best.get('holdout_top1', float('nan')):.3f} at epoch "
                     f"{best.get('epoch')} of {self.cfg.optim.epochs}")
            sizes = f"{result.n_train} train / {result.n_holdout} held out"
            if self.data.test is not None:
                test = self.score(self.data.test, chosen)
                result.top1, result.top5, result.n_test = test.top1, test.top5, test.n
                top5 = f" top-5 {test.top5:.3f}" if test.top5 is not None else ""
                result.line = (f"fine-tuned top-1 {test.top1:.3f}{top5} on the test split ({where}; {sizes} / "
                               f"{test.n} test)")
            else:
                result.line = f"fine-tuned: {where} ({sizes}; the dataset has no test split)"
            f = self.cfg.finetune
            record = {**result.to_dict(), "classes": self.info.classes, "init": self.info.init,
                      "low_shot": {"labels_per_class": f.labels_per_class, "fraction": f.label_fraction,
                                   "seed": f.draw_seed},
                      "low_shot_indices": result.low_shot_indices}
            (self.run_dir / FINAL_JSON).write_text(json.dumps(record, indent=2) + "\n")
        barrier(self.rt)

    def _print_header(self) -> None:
        if not self.rt.is_main:
            return
        enc, d, o = self.model.encoder, self.cfg.data, self.cfg.optim
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        start = f"from {self.info.init}" if self.info.init else "from random initialisation"
        splits, low = self.data.splits, ""
        if splits.low_shot is not None:
            low = f" ({len(splits.low_shot)} labelled: low-shot draw, seed {self.cfg.finetune.draw_seed})"
        print(f"openjepa finetune: ViT width {enc.embed_dim}, depth {enc.depth}, patch {enc.patch_size}, "
              f"{enc.patch_embed.img_size[0]}px, {params / 1e6:.2f}M params, {self.model.num_classes} classes, "
              f"{start}; {d.dataset}: {len(splits.train)} train / {len(splits.holdout)} held out{low}; batch "
              f"{d.batch_size} x {self.rt.world_size} process(es), {self.steps_per_epoch} steps/epoch x {o.epochs} "
              f"epochs, lr {o.lr:g} (layer decay {o.layer_decay:g}), {self.rt.describe()} -> {self.run_dir}"
              + (f"; resuming at step {self.position.global_step}" if self.position.global_step else ""), flush=True)
        advice = short_run_advice(self.cfg)
        if advice and not self.position.global_step:
            print(advice, flush=True)


def probe_shapes(cfg: FinetuneConfig, pretrained: PretrainedEncoder | None) -> ProbeShapes | None:
    """The matmul shapes of one fine-tuning step (the encoder over every patch of the image), for the CPU
    measurement behind ``train.precision=auto``; None when the settings describe no encoder (the trainer then says
    what is wrong). A resumed run's ``cfg.model`` is the one its folder recorded."""
    a = pretrained.encoder.arch() if pretrained is not None else cfg.model.encoder_kwargs()
    (height, width), patch = to_2tuple(a["img_size"]), a["patch_size"]
    if patch < 1 or height < patch or width < patch or a["embed_dim"] % a["num_heads"]:
        return None
    return encoder_probe_shapes(a["embed_dim"], a["num_heads"], a["mlp_ratio"], cfg.data.batch_size,
                                (height // patch) * (width // patch))


def finetune(cfg: FinetuneConfig, pretrained: PretrainedEncoder | VisionTransformer | None = None,
             resume: str | Path | None = None, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune ``pretrained`` (a :class:`PretrainedEncoder`, a bare encoder, or None for a random encoder of
    ``cfg.model``) on ``cfg.data``; ``resume``: a fine-tuning run folder or checkpoint to continue exactly.

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
    runtime = setup_runtime(cfg.train.device, cfg.train.precision, probe_shapes(cfg, pretrained), cfg.train.threads)
    try:
        resume_file = checkpoint_in(resume, (FINETUNE_LATEST,)) if resume is not None else None
        return FineTuner(cfg, runtime, pretrained, resume_file, overwrite).run()
    finally:
        shutdown_runtime(runtime)
