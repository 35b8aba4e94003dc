"""The pretraining loop: one entry point for CPU, one GPU, or torchrun (DDP)."""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError
from ..config import RunConfig
from ..cpu_allocator import keep_freed_memory
from ..errors import UserError
from ..ijepa import IJEPA, build_ijepa
from ..masks import build_mask_sampler, seeded_generator
from ..models.pos_embed import to_2tuple
from ..schedules import Schedules
from ..step import NonFiniteLossError, make_optimizer, train_step
from .metrics import RunLog
from .runtime import Runtime, all_reduce_mean, any_process, barrier
from .signals import StopRequest, shield_workers
from .state import (
    LATEST, RUN_CONFIG, Position, provenance_of, restore_training_state, save_run_config, save_training_state,
    training_state,
)

PREFLIGHT_MASK_BATCHES = 4  # masks drawn for the first batches before training, to catch impossible settings


class TrainingDiverged(UserError):
    """The loss (beyond the train.skip_nonfinite budget) or the weights became NaN or infinite."""


@dataclass
class PretrainResult:
    run_dir: Path
    position: Position
    last_loss: float
    stop_reason: str  # completed | interrupted | time_limit | max_steps
    signal: int | None = None
    final_line: str | None = None
    bad_files: int = 0


def prepare_run_dir(run_dir: Path, resume: Path | None, overwrite: bool, runtime: Runtime) -> None:
    """Refuse to silently mix two runs in one folder; clear what an earlier, abandoned attempt left behind."""
    latest = run_dir / LATEST
    if resume is None and latest.exists() and not overwrite:
        raise UserError(
            f"{run_dir} already holds a run ({LATEST}). Pass --resume to continue it, --overwrite to start again "
            f"from scratch in the same folder, or choose another folder with train.out_dir=PATH"
        )
    if runtime.is_main:
        if resume is None and overwrite:
            for old in run_dir.glob("jepa-*.pth.tar"):
                old.unlink()
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        if resume is None:  # a fresh start: files met by an earlier attempt may not even be in this dataset
            from ..data.bad_files import PATTERN as UNREADABLE_RECORDS

            for old in run_dir.glob(UNREADABLE_RECORDS):
                old.unlink()
        remove_unfinished_checkpoints(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(runtime)


def remove_unfinished_checkpoints(run_dir: Path) -> None:
    """Delete the temporary files of checkpoint (and config) writes that a killed process never finished.

    Both are written as ``.NAME.<random>.tmp`` and then renamed; a SIGKILL or power loss mid-write leaves the
    temporary file (the file it was replacing is intact). Without this they would pile up, one per crash.
    """
    stray = sorted([*run_dir.glob(".jepa-*.pth.tar.*.tmp"), *run_dir.glob(f".{RUN_CONFIG}.*.tmp")])
    for path in stray:
        path.unlink(missing_ok=True)
    if stray:
        print(f"openjepa: removed {len(stray)} unfinished checkpoint file(s) left in {run_dir} by an interrupted "
              f"save; the finished checkpoints are untouched", flush=True)


def check_settings(config: RunConfig, world_size: int) -> None:
    """Settings that would only fail once training runs (first batch, first forward), checked before anything
    is built or written: the patch grid, the model's shapes, and whether the masks can be drawn at all."""
    m = config.model
    height, width = to_2tuple(m.img_size)
    if m.patch_size < 1:
        raise UserError(f"model.patch_size must be a positive number of pixels, got {m.patch_size}")
    if height % m.patch_size or width % m.patch_size or height < m.patch_size or width < m.patch_size:
        below = max(m.patch_size, height // m.patch_size * m.patch_size)
        above = (height // m.patch_size + 1) * m.patch_size
        near = f"{below} or {above}" if below != above and below < height else f"{above}"
        raise UserError(
            f"model.img_size={m.img_size} is not a multiple of model.patch_size={m.patch_size}, so the images "
            f"cannot be cut into whole patches; use e.g. model.img_size={near}, or a patch size that divides "
            f"{m.img_size}"
        )
    grid = (height // m.patch_size, width // m.patch_size)
    sampler = build_mask_sampler(grid, config.mask)  # raises MaskSamplingError for impossible settings
    global_batch = config.data.batch_size * world_size
    for step in range(PREFLIGHT_MASK_BATCHES):  # the first batches' own masks: a failure now is a failure later
        sampler.sample(global_batch, seeded_generator(config.train.seed, 0, step))


def _build_model(config: RunConfig) -> IJEPA:
    try:
        return build_ijepa(config.model)
    except (ValueError, TypeError) as exc:  # e.g. a width that the number of heads does not divide
        raise UserError(
            f"the model settings do not describe a buildable network: {exc}. Check model.embed_dim, "
            f"model.num_heads, model.pred_emb_dim and model.pred_num_heads (each width must be divisible by its "
            f"number of heads)"
        ) from exc


class Trainer:
    """Builds everything from a :class:`RunConfig` and runs the loop. Use :func:`openjepa.train.pretrain`."""

    def __init__(self, config: RunConfig, runtime: Runtime, resume: Path | None = None, overwrite: bool = False):
        from ..data import build_pretrain_loader  # the data package is heavier; import where it is used

        self.cfg = config
        self.rt = runtime
        self.run_dir = Path(config.train.out_dir)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if runtime.device.type == "cpu":
            keep_freed_memory()  # reuse the heap from step to step instead of faulting activations in again
        check_settings(config, runtime.world_size)
        prepare_run_dir(self.run_dir, resume, overwrite, runtime)
        torch.manual_seed(config.train.seed)  # the same initial weights on every process
        self.data = build_pretrain_loader(
            config.data, config.model, config.mask, config.train.seed, runtime.rank, runtime.world_size,
            bad_file_dir=self.run_dir, device=runtime.device,
        )
        self._release_workers = shield_workers(self.data.loader)  # stop signals are for this process only
        self.steps_per_epoch = self.data.steps_per_epoch
        self.model: IJEPA = _build_model(config).to(runtime.device)
        if config.train.grad_checkpointing:
            self.model.encoder.set_grad_checkpointing(True)
            self.model.predictor.set_grad_checkpointing(True)
        self.model.set_selective_recompute(config.train.selective_recompute)
        self.optimizer = make_optimizer(self.model)
        self.scaler = torch.amp.GradScaler(runtime.device.type) if runtime.use_grad_scaler else None
        self.schedules = self._schedules()
        self.position = Position()
        self.provenance: dict[str, str] = {}
        if resume is not None:
            self.position, resumed = restore_training_state(
                resume, self.model, self.optimizer, self.scaler, self.steps_per_epoch
            )
            self.provenance = provenance_of(resumed)
        else:
            torch.manual_seed(config.train.seed + 1 + runtime.rank)  # drop-path noise differs across processes
        self.net = self._wrap(self.model)
        self.global_batch = config.data.batch_size * runtime.world_size
        self.log = (
            RunLog(self.run_dir, self.position.global_step if resume else None, config.train.tensorboard)
            if runtime.is_main
            else None
        )
        if runtime.is_main:
            save_run_config(config, self.run_dir, _precision_note(config, runtime))
        self.monitor = self._build_monitor() if runtime.is_main else None
        self.skipped_batches = 0
        self.saved_step: int | None = self.position.global_step if resume is not None else None

    # -- construction helpers --------------------------------------------------------------------------------------
    def _schedules(self) -> Schedules:
        o = self.cfg.optim
        total = int(o.ipe_scale * o.epochs * self.steps_per_epoch)
        return Schedules(
            total_steps=total,
            warmup_steps=int(o.warmup_epochs * self.steps_per_epoch),
            start_lr=o.start_lr,
            lr=o.lr,
            final_lr=o.final_lr,
            weight_decay=o.weight_decay,
            final_weight_decay=o.final_weight_decay,
            ema_start=o.ema[0],
            ema_end=o.ema[1],
        )

    def _wrap(self, model: IJEPA) -> torch.nn.Module:
        net: torch.nn.Module = model
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.train.compile:
            if self.rt.device.type == "cpu" and self.rt.is_main:
                tqdm.write("note: train.compile=true on a CPU: compiled steps measured 0.55-0.6x the speed of eager "
                           "ones here (eager uses oneDNN linear layers), plus a minute of compilation")
            net = torch.compile(net, dynamic=True)  # context lengths change from batch to batch
        return net

    def _build_monitor(self):
        if self.cfg.eval.online_every <= 0 and not self.cfg.eval.final_probe:
            return None
        from .monitoring import RunMonitor

        return RunMonitor(self.cfg, self.rt.device, self.run_dir)

    # -- the loop ----------------------------------------------------------------------------------------------------
    def run(self) -> PretrainResult:
        cfg, rt = self.cfg, self.rt
        total_steps = cfg.optim.epochs * self.steps_per_epoch
        self._print_header(total_steps)
        bar = tqdm(total=total_steps, initial=self.position.global_step, disable=not rt.is_main, unit="step",
                   dynamic_ncols=True, desc="pretrain")
        started = time.monotonic()
        stop = StopRequest()
        last_loss, first_step = math.nan, self.position.global_step
        try:
            with stop:
                # "completed" unless resumed at or past train.max_steps: then stop before stepping beyond it
                reason = self._should_stop(stop, started) or "completed"
                while reason == "completed" and self.position.epoch < cfg.optim.epochs:
                    last_loss, reason = self._run_epoch(bar, stop, started, last_loss)
                    if reason != "completed":
                        break
                    self.position = Position(self.position.epoch + 1, 0, self.position.global_step)
                    self._end_of_epoch(last_loss)
            if reason != "completed" and (self.position.global_step > first_step or self.saved_step is None):
                self._save(last_loss, keep=False)
                self._plot()
        finally:  # also when the run stops on an error: which files were skipped is worth knowing then too
            self._release_workers()
            bar.close()
            error = sys.exc_info()[1]
            self._report_bad_files(already_shown=str(error) if error is not None else "")
        result = PretrainResult(self.run_dir, self.position, last_loss, reason, stop.signal,
                                bad_files=self.data.bad_file_count())
        if reason == "completed":
            result.final_line = self._finish()
        return result

    def _run_epoch(self, bar, stop: StopRequest, started: float, last_loss: float) -> tuple[float, str]:
        cfg, rt, pos = self.cfg, self.rt, self.position
        self.data.set_epoch(pos.epoch, pos.step_in_epoch)
        tick = time.perf_counter()
        for batch in self.data.loader:
            data_ms = (time.perf_counter() - tick) * 1e3
            loss = self._step(batch)
            step_ms = (time.perf_counter() - tick) * 1e3 - data_ms
            self.position = pos = Position(pos.epoch, pos.step_in_epoch + 1, pos.global_step + 1)
            if loss is not None:
                last_loss = loss
                self._log_step(bar, batch, loss, step_ms, data_ms)
            reason = self._should_stop(stop, started)
            if reason:
                return last_loss, reason
            tick = time.perf_counter()
        return last_loss, "completed"

    def _step(self, batch) -> float | None:
        rt, step = self.rt, self.position.global_step
        lr, wd, momentum = self.schedules.at(step)
        images = batch.images.to(rt.device, non_blocking=True)
        ctx = batch.context.to(rt.device, non_blocking=True)
        tgt = batch.targets.to(rt.device, non_blocking=True)
        try:
            out = train_step(
                self.net, self.optimizer, images, ctx, tgt, lr, wd, momentum,
                grad_clip=self.cfg.optim.grad_clip, autocast_dtype=rt.autocast_dtype,
                scaler=self.scaler, reduce_loss=lambda t: all_reduce_mean(t, rt),
            )
        except NonFiniteLossError as exc:
            return self._non_finite(exc)
        return float(out.loss)

    def _non_finite(self, exc: NonFiniteLossError) -> None:
        self.skipped_batches += 1
        step, epoch = self.position.global_step + 1, self.position.epoch  # numbered from 1, as in metrics.csv
        if self.skipped_batches <= self.cfg.train.skip_nonfinite:
            if self.rt.is_main:
                tqdm.write(f"warning: {exc} at step {step}; batch skipped, weights untouched ({self.skipped_batches}"
                           f"/{self.cfg.train.skip_nonfinite} allowed by train.skip_nonfinite)")
            return None
        raise TrainingDiverged(
            f"training diverged: {exc} at step {step} (epoch {epoch + 1}); the step was not applied and nothing "
            f"was saved from it: {self._last_good()}. Lower optim.lr, set optim.grad_clip (e.g. 1.0), or allow "
            f"skipping a few bad batches with train.skip_nonfinite=N, then continue with "
            f"`openjepa pretrain --resume {self.run_dir}`"
        )

    def _last_good(self) -> str:
        latest = self.run_dir / LATEST
        if self.saved_step is not None and latest.exists():
            return f"the last good checkpoint is {latest} (step {self.saved_step})"
        return f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint was saved yet"

    def _log_step(self, bar, batch, loss: float, step_ms: float, data_ms: float) -> None:
        if not self.rt.is_main:
            return
        pos = self.position
        lr, wd, momentum = self.schedules.at(pos.global_step - 1)
        ips = self.global_batch / max(1e-9, (step_ms + data_ms) / 1e3)
        self.log.step({
            "step": pos.global_step, "epoch": pos.epoch + 1, "loss": loss, "lr": lr, "wd": wd,
            "momentum": momentum, "context_len": batch.context.shape[1], "target_len": batch.targets.shape[-1],
            "step_ms": step_ms, "data_ms": data_ms, "images_per_s": ips,
        })
        bar.update(1)
        bar.set_postfix_str(f"ep {pos.epoch + 1} loss {loss:.4f} lr {lr:.2e} {ips:.0f} img/s", refresh=False)

    def _should_stop(self, stop: StopRequest, started: float) -> str | None:
        t = self.cfg.train
        if any_process(stop.requested, self.rt):
            return "interrupted"
        if t.max_steps is not None and self.position.global_step >= t.max_steps:
            return "max_steps"
        if t.max_minutes is not None and any_process((time.monotonic() - started) / 60 >= t.max_minutes, self.rt):
            return "time_limit"
        return None

    # -- epoch ends, checkpoints, monitoring ------------------------------------------------------------------------
    def _end_of_epoch(self, loss: float) -> None:
        t, epoch = self.cfg.train, self.position.epoch
        keep = t.keep_every > 0 and epoch % t.keep_every == 0
        saved = epoch % max(1, t.checkpoint_every) == 0 or keep or epoch == self.cfg.optim.epochs
        if saved:
            self._save(loss, keep=keep)
        every = self.cfg.eval.online_every
        if every > 0 and (epoch % every == 0 or epoch == self.cfg.optim.epochs):
            self._monitor()
        if saved:
            self._plot()  # after the monitor, so that the picture shows this epoch's evaluation too

    def _plot(self) -> None:
        """Refresh ``curves.png`` (process 0; a picture that cannot be drawn never stops training)."""
        if self.rt.is_main:
            from ..viz.run import save_run_plot

            save_run_plot(self.run_dir, self.run_dir / "curves.png")

    def _save(self, loss: float, keep: bool) -> None:
        """Write the checkpoint (process 0); every process stops together if that fails.

        A failed write (full disk, lost mount...) stops the run rather than letting it go on for hours with no
        safe copy of its progress; the previous checkpoint is intact, so ``--resume`` continues from it.
        """
        error: Exception | None = None
        if self.rt.is_main:
            try:
                self._write_checkpoint(loss, keep)
            except (CheckpointError, TrainingDiverged) as exc:
                error = exc
        if any_process(error is not None, self.rt):  # also the barrier that keeps the processes in step
            raise error or UserError(f"stopping at step {self.position.global_step}: process 0 could not save "
                                     f"the checkpoint (its message says why)")

    def _write_checkpoint(self, loss: float, keep: bool) -> None:
        step = self.position.global_step
        bad = _first_non_finite(self.model)
        if bad is not None:  # a NaN/inf update slipped past a finite loss: never let it replace a good checkpoint
            raise TrainingDiverged(
                f"training diverged: the weights hold NaN or inf values after step {step} (first: {bad}), so no "
                f"checkpoint was written and {self._last_good()}. Lower optim.lr or set optim.grad_clip (e.g. "
                f"1.0), then continue with `openjepa pretrain --resume {self.run_dir}`"
            )
        state = training_state(self.model, self.optimizer, self.scaler, self.position, loss,
                               self.cfg.data.batch_size, self.rt.world_size, self.cfg.to_dict(),
                               {"mean": list(self.data.mean), "std": list(self.data.std)}, self.provenance,
                               self.rt.precision_choice.record() if self.rt.precision_choice else None)
        try:
            save_training_state(state, self.run_dir, self.position.epoch if keep else None)
        except CheckpointError as exc:
            redo = (f"`openjepa pretrain --resume {self.run_dir}` continues from step {self.saved_step}"
                    if self.saved_step is not None else "the run has to start again")
            raise CheckpointError(
                f"{exc}. Training stopped at step {step} instead of going on without a safe copy of its progress; "
                f"free some space (or choose another train.out_dir), then {redo}"
            ) from exc
        self.saved_step = step

    def _monitor(self) -> None:
        if self.monitor is not None:
            row = self.monitor.run(self.model.target_encoder)
            row = {"step": self.position.global_step, "epoch": self.position.epoch, **row}
            self.log.monitored(row)
            tqdm.write(self.monitor.describe(row))
        barrier(self.rt)

    def _finish(self) -> str | None:
        line = None
        if self.rt.is_main:
            if self.monitor is not None and self.cfg.eval.final_probe:
                line = self.monitor.final(self.model.target_encoder, self.run_dir)
        barrier(self.rt)
        return line

    def _report_bad_files(self, already_shown: str = "") -> None:
        """Print the list of unreadable files met by any process, once, at the end of the run (unless the error
        that ends the run already carries it)."""
        if self.rt.is_main:
            summary = self.data.bad_files.summary()
            if summary and summary not in already_shown:
                print(summary, flush=True)

    def _print_header(self, total_steps: int) -> None:
        if not self.rt.is_main:
            return
        m, d = self.cfg.model, self.cfg.data
        enc = self.model.encoder
        params = sum(p.numel() for p in self.model.encoder.parameters() if p.requires_grad)
        pred = sum(p.numel() for p in self.model.predictor.parameters() if p.requires_grad)
        print(
            f"openjepa pretrain: {m.arch} (width {enc.embed_dim}, depth {enc.depth}, patch {m.patch_size}, "
            f"{m.img_size}px, {params / 1e6:.2f}M params; predictor {pred / 1e6:.2f}M) on {d.dataset} "
            f"({len(self.data.dataset)} images), batch {d.batch_size} x {self.rt.world_size} process(es), "
            f"{self.steps_per_epoch} steps/epoch x {self.cfg.optim.epochs} epochs = {total_steps} steps, "
            f"{self.rt.describe()} -> {self.run_dir}"
            + (f"; resuming at step {self.position.global_step}" if self.position.global_step else ""),
            flush=True,
        )


def _precision_note(config: RunConfig, runtime: Runtime) -> str | None:
    """The config.yaml comment that records what ``train.precision`` resolved to on this machine."""
    choice = runtime.precision_choice
    if choice is None:
        return None
    return f"train.precision={config.train.precision} resolved to {choice.precision} here ({choice.describe()})"


def _first_non_finite(model: IJEPA) -> str | None:
    """The name of the first parameter holding a NaN or inf, or None when every weight is finite."""
    for prefix, module in (("encoder", model.encoder), ("predictor", model.predictor),
                           ("target_encoder", model.target_encoder)):
        for name, param in module.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return f"{prefix}.{name}"
    return None
