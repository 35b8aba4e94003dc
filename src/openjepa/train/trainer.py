"""The pretraining loop: one entry point for CPU, one GPU, or torchrun (DDP).

``Trainer(config, runtime)`` builds everything a run needs and writes nothing; :meth:`Trainer.run` trains::

    for epoch:
        for the step's micro-batches (optim.accum_steps of them; 1 without gradient accumulation):
            lr, wd, momentum = schedules.at(step)          once per step
            accumulated_step(...)                           one host sync: loss, stop request, deadline, saves
            log the step; stop if a stop reason came up; a checkpoint when train.checkpoint_minutes passed
        checkpoint (in the background), online monitor, curves.png
    stopped: a last checkpoint (no second host copy), then wait for it (train.stop_grace_seconds after a signal)

The loop's only exit conditions are the epochs running out and a stop reason (a value: ``interrupted``,
``time_limit``, ``max_steps``); a NaN loss is skipped (``train.skip_nonfinite``) or ends the run with an error, and
so does a checkpoint that could not be written (on every process together).

Random layers (drop-path) draw from the global torch generator, which is seeded before every micro-batch from
``(train.seed, step, virtual rank)`` (see :func:`micro_batch_seeds`): with masks and crops already pure functions of
``(seed, epoch, step, sample)``, a run is then a pure function of its settings and step, on every process, and a
resumed run needs no random state from the checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import RunConfig, accumulation_steps
from ..config_sections import TrainConfig
from ..cpu_allocator import keep_freed_memory
from ..data.collate import MaskedBatch
from ..data.loader import build_pretrain_loader
from ..data.sampler import virtual_rank
from ..errors import CheckpointError, UserError
from ..ijepa import IJEPA
from ..run_folder import (
    CURVES_PNG,
    LATEST,
    clear_earlier_run,
    refuse_to_mix_runs,
    remove_unfinished_writes,
    save_run_config,
)
from ..schedules import Schedules
from ..seeding import seed_from
from ..step import NonFiniteLossError, StepResult, accumulated_step, make_optimizer
from ..viz.run import save_run_plot
from .autoprecision import run_probe_shapes
from .checkpoints import (
    Position,
    first_non_finite,
    provenance_of,
    restore_training_state,
    training_state,
)
from .deadline import RunLength
from .evaluation import RunMonitor
from .preflight import build_model, check_settings
from .progress import Progress
from .run_log import GRAD_NORM_FIELD, REGULARIZER_FACTOR_FIELD, STEP_FIELDS, RunLog
from .runtime import (
    Runtime,
    agree_min,
    any_process,
    barrier,
    exchange,
    same_on_every_process,
    setup_runtime,
    shutdown_runtime,
)
from .saving import RunCheckpoints
from .shell import loop_shell
from .stopping import COMPLETED, INTERRUPTED, limit_reached, past_deadline, stop_reason

DROP_PATH_STREAM = 0x44524F50  # keeps the per-micro-batch seeds apart from every other seeded stream


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
    saved_step: int | None = None  # the step of jepa-latest.pth.tar (behind position when the last save timed out)
    schedule_fit: dict | None = None  # train.fit_to_deadline: the fitted length and each re-plan


class StepFlags(NamedTuple):
    """What the processes tell each other with each step's one host sync (true on all if true on any)."""

    stop: bool = False  # a stop signal reached a process
    late: bool = False  # train.max_minutes ran out
    save_due: bool = False  # train.checkpoint_minutes passed since the last save (process 0's clock)
    save_failed: bool = False  # process 0's background checkpoint write failed
    replan_due: bool = False  # train.fit_to_deadline: time to re-plan the run's length


def micro_batch_seeds(seed: int, step: int, rank: int, world_size: int, accum_steps: int) -> list[int]:
    """The global generator's seed for each micro-batch of a step on process ``rank``: a hash of ``(seed, step,
    virtual rank)`` (micro-batch ``a`` plays rank ``a x world_size + rank``), so that drop-path noise depends on
    where a micro-batch sits in training only, and is the same for every split of the global batch into processes
    x micro-batches with the same product."""
    return [seed_from(seed, step, virtual_rank(a, rank, world_size), DROP_PATH_STREAM) for a in range(accum_steps)]


def steps_of(micro_batches: Iterable[MaskedBatch], accum_steps: int) -> Iterator[list[MaskedBatch]]:
    """The loader's micro-batches grouped by step (``accum_steps`` consecutive ones)."""
    group: list[MaskedBatch] = []
    for batch in micro_batches:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []
    if group:
        raise RuntimeError(f"the loader's epoch ended inside a step ({len(group)} of {accum_steps} micro-batches)")


def pretrain(config: RunConfig, resume: str | Path | None = None, overwrite: bool = False) -> PretrainResult:
    """Pretrain with ``config``; ``resume`` is a checkpoint file (openjepa's or a released one) to continue from.

    >>> from openjepa.config import load_config
    >>> result = pretrain(load_config("digits", ["optim.epochs=1"]))  # doctest: +SKIP
    """
    runtime = setup_runtime(config.train.device, config.train.precision, run_probe_shapes(config),
                            config.train.threads)
    try:
        return Trainer(config, runtime, Path(resume) if resume else None, overwrite).run()
    finally:
        shutdown_runtime(runtime)


class Trainer:
    """Everything a run needs, built from a :class:`RunConfig` without writing any file; :meth:`run` trains."""

    def __init__(self, config: RunConfig, runtime: Runtime, resume: Path | None = None, overwrite: bool = False):
        self.cfg, self.rt, self.resume, self.overwrite = config, runtime, resume, overwrite
        self.run_dir = Path(config.train.out_dir)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if runtime.device.type == "cpu":
            keep_freed_memory()  # reuse the heap from step to step instead of faulting activations in again
        check_settings(config, runtime.world_size)
        refuse_to_mix_runs(self.run_dir, resume, overwrite)
        self.accum_steps = accumulation_steps(config, runtime.world_size)
        torch.manual_seed(config.train.seed)  # the same initial weights on every process
        self.data = build_pretrain_loader(
            config.data, config.model, config.mask, config.train.seed, runtime.rank, runtime.world_size,
            bad_file_dir=self.run_dir, device=runtime.device, accum_steps=self.accum_steps,
        )
        self.steps_per_epoch = self.data.steps_per_epoch
        self.model: IJEPA = build_model(config).to(runtime.device)
        if config.train.grad_checkpointing:
            self.model.encoder.set_grad_checkpointing(True)
            self.model.predictor.set_grad_checkpointing(True)
        self.model.set_selective_recompute(config.train.selective_recompute)
        self.optimizer = make_optimizer(self.model)
        self.scaler = torch.amp.GradScaler(runtime.device.type) if runtime.use_grad_scaler else None
        self.schedules = self._schedules()
        self.position, self.provenance, resumed = Position(), {}, {}
        if resume is not None:
            self.position, resumed = restore_training_state(
                resume, self.model, self.optimizer, self.scaler, self.steps_per_epoch
            )
            self.provenance = provenance_of(resumed)
        self._check_same_position(resume)
        self.length = RunLength(config, self.steps_per_epoch, self.position.global_step, resumed.get("schedule_fit"))
        self.fit_completed = False  # a run of fitted length took its last step
        self.net = self._wrap(self.model)
        self.global_batch = config.data.batch_size * runtime.world_size * self.accum_steps
        self.monitor = self._build_monitor() if runtime.is_main else None
        self.checkpoints = RunCheckpoints(self.run_dir, runtime.is_main, runtime.device,
                                          self.position.global_step if resume is not None else None)
        self.log: RunLog | None = None  # opened by run(), on process 0
        self.skipped_batches = 0
        self.flags = StepFlags()  # as of the last step
        self.stop_seen: float | None = None  # when process 0 learned that the run stops (time.monotonic)

    def _check_same_position(self, resume: Path | None) -> None:
        """Every process must start from the same step: with ``train.out_dir`` on a disk that not all of them see,
        some would resume (``--auto-resume`` decides on each process) and others start afresh, and training would
        silently diverge."""
        if not same_on_every_process(self.position.global_step, self.rt):
            where = f"step {self.position.global_step} from {resume}" if resume is not None else "a new run"
            raise CheckpointError(
                f"the processes of this run resumed from different steps (this one: {where}): train.out_dir (or "
                f"the --resume path) must be on a file system that every node sees, holding the same files"
            )

    @property
    def saved_step(self) -> int | None:
        """The step of the newest complete checkpoint."""
        return self.checkpoints.saved_step

    def _schedules(self) -> Schedules:
        o = self.cfg.optim
        return Schedules(
            total_steps=int(o.ipe_scale * o.epochs * self.steps_per_epoch),  # the schedules may outlast training
            warmup_steps=int(o.warmup_epochs * self.steps_per_epoch),
            start_lr=o.start_lr, lr=o.lr, final_lr=o.final_lr,
            weight_decay=o.weight_decay, final_weight_decay=o.final_weight_decay,
            ema_start=o.ema[0], ema_end=o.ema[1],
            regularizer_fade=self.cfg.model.regularizer_fade if self.model.regularizer.active else None,
        )

    @property
    def epochs(self) -> int:
        """The run's number of epochs: the recipe's, or as many as its fitted length reaches."""
        return self.length.epochs

    def _schedule_values(self, step: int) -> tuple[float, float, float]:
        """``(lr, weight_decay, ema_momentum)`` of ``step``: the schedules where the run's length puts the step.
        Sets the regulariser's fade factor of that step on the model, too."""
        position = self.length.position(step)
        self.regularizer_factor = self.schedules.regularizer_factor_at(position)
        self.model.set_regularizer_factor(self.regularizer_factor)
        return self.schedules.at(position)

    def _wrap(self, model: IJEPA) -> torch.nn.Module:
        net: torch.nn.Module = model
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.train.compile:
            if self.rt.device.type == "cpu" and self.rt.is_main:
                print("note: train.compile=true on a CPU: compiled steps measured 0.55-0.6x the speed of eager "
                      "ones here (eager uses oneDNN linear layers), plus a minute of compilation", flush=True)
            net = torch.compile(net, dynamic=True)  # context lengths change from batch to batch
        return net

    def _build_monitor(self) -> RunMonitor | None:
        if self.cfg.eval.online_every <= 0 and not self.cfg.eval.final_probe:
            return None
        return RunMonitor(self.cfg, self.rt.device, self.run_dir)

    # -- the loop ------------------------------------------------------------------------------------------------------
    def run(self) -> PretrainResult:
        cfg, rt = self.cfg, self.rt
        self.started = time.monotonic()  # train.max_minutes counts from here
        self._open_run_dir()
        self._print_header()
        self.progress = Progress(self.length.steps, self.position.global_step, self.epochs, rt.is_main,
                                 cfg.train.log_every, cfg.train.progress_seconds)
        baseline_started = time.monotonic()
        self._monitor_baseline()
        loop_started = time.monotonic()
        # A fitted run keeps time free for its last monitor run: about as long as the one before training.
        self.length.start(cfg.train.max_minutes, self.started, self.position.global_step, loop_started,
                          end_s=loop_started - baseline_started)
        self.checkpoints.last_start = loop_started
        self.checkpoints.report = self.progress.write
        first_step, last_loss = self.position.global_step, math.nan
        self._limits = self._run_limits()
        reason = self._limit_at_start()  # a run resumed at its limit takes no step
        with loop_shell(self.data.loader, self.progress, self.log, self.data.bad_files, rt) as self.stop:
            try:
                while reason is None and self.position.epoch < self.epochs:
                    self.data.set_epoch(self.position.epoch, self.position.step_in_epoch)
                    tick = time.perf_counter()
                    for batches in steps_of(self.data.loader, self.accum_steps):
                        data_ms = (time.perf_counter() - tick) * 1e3
                        lr, wd, momentum = self._schedule_values(self.position.global_step)
                        out = self._step(batches, lr, wd, momentum)
                        step_ms = (time.perf_counter() - tick) * 1e3 - data_ms
                        self.position = self.position.after_step()
                        if out is not None:
                            last_loss = out.read[0]
                            self._log_step(batches[0], out, lr, wd, momentum, step_ms, data_ms)
                        reason = self._after_step(last_loss)
                        if reason is not None:
                            break
                        tick = time.perf_counter()
                    else:
                        self.position = self.position.after_epoch()
                        self._end_of_epoch(last_loss)
                reason = reason or COMPLETED
                if reason != COMPLETED and (self.position.global_step > first_step or self.saved_step is None):
                    self._save(last_loss, keep=False, stopped=True, signalled=reason == INTERRUPTED)
                    self._plot()  # while the checkpoint is written
                elif self.fit_completed and self.position.global_step > first_step:
                    self._end_of_fitted_run(last_loss)
            except Exception:
                if self.checkpoints.writer is not None and self.checkpoints.writer.busy:
                    self.checkpoints.settle()  # a good checkpoint under way is worth finishing before the error
                raise
        final_line = self._finish() if reason == COMPLETED else None  # the final probe, while the last save runs
        self._wait_for_checkpoint(reason)
        return PretrainResult(self.run_dir, self.position, last_loss, reason, self.stop.signal, final_line,
                              self.data.bad_file_count(), self.saved_step, self.length.record())

    def _open_run_dir(self) -> None:
        """Clear what an earlier attempt left behind, write ``config.yaml`` and open the logs (process 0); the
        other processes wait for it."""
        if self.rt.is_main:
            if self.resume is None:
                clear_earlier_run(self.run_dir, self.overwrite)
            remove_unfinished_writes(self.run_dir)
            save_run_config(self.cfg, self.run_dir, self.rt.precision_note())
            resume_step = self.position.global_step if self.resume is not None else None
            self.log = RunLog(self.run_dir, resume_step, self.cfg.train.tensorboard, step_fields=self._step_fields())
        barrier(self.rt)

    def _step_fields(self) -> tuple[str, ...]:
        """The columns of ``metrics.csv``: the standard ones, and the optional ones this run computes."""
        optional = {GRAD_NORM_FIELD: self._logs_grad_norm,
                    REGULARIZER_FACTOR_FIELD: self.schedules.regularizer_fade is not None}
        return (*STEP_FIELDS, *(name for name, logged in optional.items() if logged))

    @property
    def _logs_grad_norm(self) -> bool:
        """The gradient norm is logged when clipping computes it, before the step's sync (not under fp16 scaling)."""
        return bool(self.cfg.optim.grad_clip) and self.scaler is None

    def _step(self, batches: list[MaskedBatch], lr: float, wd: float, momentum: float) -> StepResult | None:
        """One optimisation step over the step's micro-batches; None when its loss was not finite and the step was
        skipped."""
        micro = [(b.images, b.context, b.targets) for b in batches]
        seeds = micro_batch_seeds(self.cfg.train.seed, self.position.global_step, self.rt.rank, self.rt.world_size,
                                  self.accum_steps)
        try:
            return accumulated_step(self.net, self.optimizer, micro, lr, wd, momentum,
                                    grad_clip=self.cfg.optim.grad_clip, autocast_dtype=self.rt.autocast_dtype,
                                    scaler=self.scaler, exchange=self._exchange, seeds=seeds)
        except NonFiniteLossError as exc:
            return self._non_finite(exc)

    def _exchange(self, values: torch.Tensor) -> list[float]:
        """The step's one host sync: its values (mean over processes) read together with this process's stop
        request and deadline, and process 0's checkpoint news (a save due, a write that failed), which then hold
        on every process if they hold on any."""
        t = self.cfg.train
        late = past_deadline(self.started, t.max_minutes)
        saves = self.checkpoints
        mine = StepFlags(self.stop.requested, late, saves.due(t.checkpoint_minutes), saves.failed(),
                         self.length.due())
        means, flags = exchange(values, mine, self.rt)
        self.flags = StepFlags(*flags)
        return means

    def _after_step(self, loss: float) -> str | None:
        """What the step's flags ask for: an error when a checkpoint write failed, a stop reason, or a save."""
        self.checkpoints.poll()
        if self.flags.save_failed:
            self._raise_save_failure()
        reason = self._stop_reason()
        if reason is None and self.flags.replan_due:
            self._replan()
        if reason is None and self.flags.save_due and not self._epoch_end_saves():
            self._save(loss, keep=False)
        return reason

    def _raise_save_failure(self) -> None:
        step = self.position.global_step
        if self.rt.is_main:
            self.checkpoints.wait(step)  # raises the write's error, explained
        raise UserError(f"stopping at step {step}: process 0 could not write the checkpoint (its message says why)")

    def _stop_reason(self) -> str | None:
        """Why to stop after this step (None: go on); a request that came after the step's sync counts in a run of
        one process, which has no other process to agree with."""
        reason = stop_reason((self.flags.stop, self.flags.late), self._limits, self.position.global_step,
                             self.stop.requested and not self.rt.distributed)
        if reason == INTERRUPTED:
            self.stop_seen = self.stop_seen or time.monotonic()
        if reason is None and self.length.ended(self.position.global_step):
            self.fit_completed = True
            reason = COMPLETED
        return reason

    def _run_limits(self) -> TrainConfig:
        """The ``train`` section's limits as the loop starts (a fitted run's length is its fit's: train.max_steps
        was the guess); built once, not at every step (``replace`` re-validates the section)."""
        return replace(self.cfg.train, max_steps=None) if self.length.fit is not None else self.cfg.train

    def _limit_at_start(self) -> str | None:
        """Why a run takes no step at all: resumed at its limit, or at the end of its fitted length."""
        step = self.position.global_step
        if not self.length.fitting and self.length.ended(step):
            return COMPLETED
        return limit_reached(self._limits, step)

    def _replan(self) -> None:
        """Fit the run's length to the time left (train.fit_to_deadline); every process takes the shortest."""
        message = self.length.replan(self.position.global_step, lambda steps: agree_min(steps, self.rt))
        self.progress.replan(self.length.steps, self.epochs)
        if message:
            self.progress.write(message)

    def _end_of_fitted_run(self, loss: float) -> None:
        """A fitted run ends mid-epoch: the last checkpoint, the monitor's last look, and the curves."""
        self._save(loss, keep=False, stopped=True)
        if self.cfg.eval.online_every > 0:
            self._monitor()
        self._plot()

    def _non_finite(self, exc: NonFiniteLossError) -> None:
        self.skipped_batches += 1
        step, epoch = self.position.global_step + 1, self.position.epoch  # numbered from 1, as in metrics.csv
        if self.skipped_batches <= self.cfg.train.skip_nonfinite:
            self.progress.write(f"warning: {exc} at step {step}; batch skipped, weights untouched "
                                f"({self.skipped_batches}/{self.cfg.train.skip_nonfinite} allowed by "
                                f"train.skip_nonfinite)")
            return None
        raise TrainingDiverged(
            f"training diverged: {exc} at step {step} (epoch {epoch + 1}); the step was not applied and nothing "
            f"was saved from it: {self._last_good()}. Lower optim.lr, set optim.grad_clip (e.g. 1.0), or allow "
            f"skipping a few bad batches with train.skip_nonfinite=N, then continue with "
            f"`openjepa pretrain --resume {self.run_dir}`"
        )

    def _last_good(self) -> str:
        self.checkpoints.settle()  # a save under way holds good weights: let it finish, then name it
        latest = self.run_dir / LATEST
        if self.saved_step is not None and latest.exists():
            return f"the last good checkpoint is {latest} (step {self.saved_step})"
        return f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint was saved yet"

    def _log_step(self, batch: MaskedBatch, out: StepResult, lr: float, wd: float, momentum: float,
                  step_ms: float, data_ms: float) -> None:
        if not self.rt.is_main:
            return
        pos, loss = self.position, out.read[0]
        ips = self.global_batch / max(1e-9, (step_ms + data_ms) / 1e3)
        row = {"step": pos.global_step, "epoch": pos.epoch + 1, "loss": loss, "lr": lr, "wd": wd,
               "momentum": momentum, "context_len": batch.context.shape[1], "target_len": batch.targets.shape[-1],
               "step_ms": step_ms, "data_ms": data_ms, "images_per_s": ips}
        if self._logs_grad_norm:
            row[GRAD_NORM_FIELD] = out.read[1]
        if self.schedules.regularizer_fade is not None:
            row[REGULARIZER_FACTOR_FIELD] = self.regularizer_factor
        self.log.step(row)
        self.progress.update(pos.global_step, pos.epoch, loss, lr, ips)

    # -- epoch ends, checkpoints, monitoring --------------------------------------------------------------------------
    def _saves_at_end_of(self, epoch: int) -> tuple[bool, bool]:
        """Whether the end of ``epoch`` (counted from 1) writes the latest checkpoint, and keeps a numbered copy."""
        t = self.cfg.train
        keep = t.keep_every > 0 and epoch % t.keep_every == 0
        return epoch % max(1, t.checkpoint_every) == 0 or keep or epoch == self.epochs, keep

    def _epoch_end_saves(self) -> bool:
        """Whether the step just taken ended its epoch, and that epoch's end writes a checkpoint anyway."""
        pos = self.position
        return pos.step_in_epoch >= self.steps_per_epoch and self._saves_at_end_of(pos.epoch + 1)[0]

    def _end_of_epoch(self, loss: float) -> None:
        epoch = self.position.epoch
        saved, keep = self._saves_at_end_of(epoch)
        if saved:
            # The last epoch's weights change no more (only the probes read them): written without a copy.
            self._save(loss, keep=keep, stopped=epoch == self.epochs)
        every = self.cfg.eval.online_every
        if every > 0 and (epoch % every == 0 or epoch == self.epochs):
            self._monitor()
        if saved:
            self._plot()  # after the monitor, so that the picture shows this epoch's evaluation too

    def _plot(self) -> None:
        """Refresh ``curves.png`` (process 0; a picture that cannot be drawn never stops training)."""
        if self.rt.is_main:
            save_run_plot(self.run_dir, self.run_dir / CURVES_PNG)

    def _save(self, loss: float, keep: bool, stopped: bool = False, signalled: bool = False) -> None:
        """Start writing the checkpoint in the background (process 0); every process stops together if that
        cannot start (weights that are not finite, or the previous write failed).

        A failed write (full disk, lost mount...) stops the run rather than letting it go on for hours with no
        safe copy of its progress; the previous checkpoint is intact, so ``--resume`` continues from it. A write
        that fails in the background is reported by the next step (every process learns of it in the step's
        sync) or the next save, whichever comes first.
        """
        error: Exception | None = None
        if self.rt.is_main:
            try:
                self._write_checkpoint(loss, keep, stopped, signalled)
            except (CheckpointError, TrainingDiverged) as exc:
                error = exc
        else:
            self.checkpoints.start({}, self.position.global_step)
        if any_process(error is not None, self.rt):  # also the barrier that keeps the processes in step
            raise error or UserError(f"stopping at step {self.position.global_step}: process 0 could not save "
                                     f"the checkpoint (its message says why)")

    def _write_checkpoint(self, loss: float, keep: bool, stopped: bool, signalled: bool) -> None:
        step = self.position.global_step
        bad = first_non_finite(self.model)
        if bad is not None:  # a NaN/inf update slipped past a finite loss: never let it replace a good checkpoint
            raise TrainingDiverged(
                f"training diverged: the weights hold NaN or inf values after step {step} (first: {bad}), so no "
                f"checkpoint was written and {self._last_good()}. Lower optim.lr or set optim.grad_clip (e.g. "
                f"1.0), then continue with `openjepa pretrain --resume {self.run_dir}`"
            )
        state = training_state(self.model, self.optimizer, self.scaler, self.position, loss,
                               self.cfg.data.batch_size, self.rt.world_size, self.cfg.to_dict(),
                               {"mean": list(self.data.mean), "std": list(self.data.std)}, self.provenance,
                               self.rt.precision_choice.record() if self.rt.precision_choice else None,
                               self.accum_steps)
        fit = self.length.state_dict()
        if fit is not None:
            state["schedule_fit"] = fit
        # After a stop signal, a periodic save still under way may take no more than the grace period either.
        self.checkpoints.start(state, step, self.position.epoch if keep else None, stopped, signalled,
                               timeout=self._grace_left() if signalled else None)

    def _wait_for_checkpoint(self, reason: str) -> None:
        """Wait until the last checkpoint is written; after a stop signal, at most ``train.stop_grace_seconds``
        from the stop request (then exit without it: the previous checkpoint stays in place). Every process waits,
        so that the launcher sees them end together, learns whether the checkpoint was written, and stops with an
        error if the write failed."""
        error: Exception | None = None
        written = True
        if self.rt.is_main:
            timeout = self._grace_left() if reason == INTERRUPTED else None
            try:
                written = self.checkpoints.wait(self.position.global_step, timeout)
            except CheckpointError as exc:
                error = exc
            if not written:
                print(f"openjepa: {self.checkpoints.describe_pending()} was not complete "
                      f"{self.cfg.train.stop_grace_seconds:g} s after the stop request "
                      f"(train.stop_grace_seconds); exiting without it: "
                      + (f"{self.run_dir / LATEST} still holds step {self.saved_step}"
                         if self.saved_step is not None else "no checkpoint was written"), flush=True)
        nothing = torch.zeros(0, device=self.rt.device)
        failed, abandoned = exchange(nothing, (error is not None, not written), self.rt)[1]
        if failed:
            raise error or UserError(f"stopping at step {self.position.global_step}: process 0 could not write "
                                     f"the checkpoint (its message says why)")
        if not self.rt.is_main:
            self.checkpoints.conclude(written=not abandoned)

    def _grace_left(self) -> float | None:
        grace = self.cfg.train.stop_grace_seconds
        if grace is None:
            return None
        since = min(t for t in (self.stop.requested_at, self.stop_seen, time.monotonic()) if t is not None)
        return max(0.0, grace - (time.monotonic() - since))

    def _monitor(self) -> None:
        if self.monitor is not None:
            row = self.monitor.run(self.model.target_encoder, self.log.monitor.rows() if self.log else [])
            row = {"step": self.position.global_step, "epoch": self.position.epoch, **row}
            self.log.monitored(row)
            self.progress.write(self.monitor.describe(row))
            self.progress.flag(self.monitor.flag)
        barrier(self.rt)

    def _monitor_baseline(self) -> None:
        """Score the random-init twin of the target encoder once, before training: the monitor's reference."""
        if self.monitor is not None and self.cfg.eval.online_every > 0:
            self.progress.write(self.monitor.set_baseline(self.model.target_encoder))
        barrier(self.rt)

    def _finish(self) -> str | None:
        line = None
        if self.rt.is_main and self.monitor is not None and self.cfg.eval.final_probe:
            line = self.monitor.final(self.model.target_encoder, self.run_dir)
        barrier(self.rt)
        return line

    def _print_header(self) -> None:
        if not self.rt.is_main:
            return
        m, d = self.cfg.model, self.cfg.data
        enc = self.model.encoder
        params = sum(p.numel() for p in self.model.encoder.parameters() if p.requires_grad)
        pred = sum(p.numel() for p in self.model.predictor.parameters() if p.requires_grad)
        print(
            f"openjepa pretrain: {m.arch} (width {enc.embed_dim}, depth {enc.depth}, patch {m.patch_size}, "
            f"{m.img_size}px, {params / 1e6:.2f}M params; predictor {pred / 1e6:.2f}M) on {d.dataset} "
            f"({len(self.data.dataset)} images), batch {d.batch_size} x {self.rt.world_size} process(es)"
            + (f" x {self.accum_steps} micro-batches = {self.global_batch} per step" if self.accum_steps > 1 else "")
            + f", {self.steps_per_epoch} steps/epoch x {self.length.describe(self.cfg.train.max_minutes)}, "
            f"{self.rt.describe()} -> {self.run_dir}"
            + (f"; resuming at step {self.position.global_step}" if self.position.global_step else ""),
            flush=True,
        )
