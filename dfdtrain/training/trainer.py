"""The Trainer: built once from an ExperimentConfig, it trains an epoch -> validates -> logs -> checkpoints, until
the last epoch or early stopping. One instance runs on every rank (torchrun, the deepspeed launcher or srun).

    trainer = Trainer(config)            # process group, model, clip spec, loaders, optimizer, engine
    report = trainer.train()             # the whole run; or, piece by piece:
    trainer.begin_epoch(epoch); trainer.train_step(batch); trainer.validate(); trainer.state_dict()

The run directory (``RunDirectory``) holds the resolved ``config.yaml``, ``metrics.jsonl``, ``curves.png``
(redrawn after every evaluation), ``checkpoints/{last,best}`` (each with the ``detector.json`` that
evaluate/predict/export read) and, at the end, ``report.json``. A run resumes from ``checkpoints/last``, mid-epoch too: the loader is deterministic
per epoch, so the batches already trained are replayed without training. The ranks' BatchNorm statistics (each
rank's own batches update its copy) are averaged over the ranks before every validation and checkpoint, so every
rank validates with, and resumes from, the one copy a checkpoint holds. A finished run (every epoch trained,
or stopped early) started again says so and leaves its directory as it is, unless ``train.epochs`` (or
``train.patience``) now asks for more.

Non-finite losses are tracked on the device (no host sync per step) and checked, across all ranks at once, at
every log step and before every checkpoint: a diverged run stops every rank together with one line, and a
checkpoint never holds non-finite weights.
"""

import collections
import dataclasses
import logging
import random
import time
from typing import Optional

import numpy as np
import torch

from dfdtrain.metrics.calibration import describe as describe_calibration
from dfdtrain.metrics.calibration import fit_calibration
from dfdtrain.config import config_to_dict, resolved_run_config
from dfdtrain.data import storage
from dfdtrain.data.loading.loader import VideoLoader, expand_shards
from dfdtrain.data.loading.sources import (describe_sources, epoch_sources, positive_weight, source_values,
                                           training_urls)
from dfdtrain.data.shards.catalog import test_split_overlap
from dfdtrain.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from dfdtrain.core.distributed import (any_rank, barrier, broadcast_object, gather_to_rank0, init_distributed,
                                       raise_together)
from dfdtrain.training.batch_source import BatchSource
from dfdtrain.training.engines import Engine, build_engine
from dfdtrain.models.loss import video_bce
from dfdtrain.training.optim import LearningRateSchedule, build_optimizer
from dfdtrain.core.text import format_number
from dfdtrain.training.run_logger import RunLogger, system_values
from dfdtrain.training.run_directory import REPORT_FILE, RunDirectory, run_report, skipped_summary
from dfdtrain.training.state import StepResult, TrainState, improved
from dfdtrain.evaluation.scoring import metric_value, validation_metrics
from dfdtrain.core.errors import DfdError
from dfdtrain.metrics import format_metrics_table
from dfdtrain.models.base_identity import base_identity, trained_only
from dfdtrain.models.bundle import SETTINGS_FILE, calibrated, detector_settings
from dfdtrain.models.detector import build_detector_from_config
from dfdtrain.models.finetune import (FinetuneSchedule, apply_phase, freeze_batchnorm_statistics, parameter_groups,
                                      set_trainable_stages)
from dfdtrain.models.finetune_methods import apply_finetune

log = logging.getLogger(__name__)


class NonFiniteLoss(DfdError):
    pass


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class Trainer:
    """Training of one ExperimentConfig on this rank.

    ``train_loader`` / ``val_loader``: batches to use instead of VideoLoaders over ``data.train_shards`` /
    ``data.val_shards`` (the end-to-end benchmark feeds one batch already on the device; tests and the engine
    benchmark feed fixed data: ``dfdtrain.testing.batches.FixedBatches``). A loader is a ``BatchSource``:
    ``len()``, ``set_epoch(epoch)``, iteration and a ``skipped`` list, like VideoLoader. Without val shards or a
    val loader, ``validate`` and ``train`` are unavailable.
    """

    def __init__(self, config, train_loader: Optional[BatchSource] = None, val_loader: Optional[BatchSource] = None,
                 progress=True):
        self.config, self.progress = config, progress
        self.storage_retries = collections.Counter()  # rank 0: every rank's retried storage faults
        self.context = context = init_distributed(config.train.device)
        self.directory = RunDirectory(config, context)  # the lock, config.yaml, report.json, curves.png
        self.run_dir = self.directory.path
        self.embeddings = config.data.source == "embeddings"

        seed_everything(config.seed)  # the same initial weights on every rank
        model = build_detector_from_config(config.model, config.clip)
        self.settings = detector_settings(config, model)  # the resolved clip spec, threshold: saved with checkpoints
        self.clip = self.settings.clip
        self.schedule = FinetuneSchedule.from_config(config.finetune)
        # a frozen base (finetune.method not full): checkpoints hold the trained tensors, detector.json the base
        # (identified as built, before the method changes it)
        self.trained_only = trained_only(config.finetune) and not self.embeddings
        if self.trained_only:
            self.settings = dataclasses.replace(self.settings, base=base_identity(config.model, config.seed, model))
        # finetune.method: requires_grad and wrapped layers, before the optimizer; its extra loss (or None)
        self.regularizer = apply_finetune(model, config.finetune)
        if self.embeddings:  # cached features: the backbone is not run, so it cannot train
            set_trainable_stages(model, 0)
        if config.model.sync_batchnorm and context.world_size > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

        if val_loader is None and config.data.val_shards:  # model selection and calibration never see test data
            training = training_urls(config.data) if train_loader is None else []
            overlap = test_split_overlap(expand_shards(config.data.val_shards), training)
            if overlap:
                raise DfdError(f"data.val_shards: {overlap}; checkpoints, early stopping and calibration must "
                               "use validation data only (shard the index's val split)")
        if train_loader is None:
            train_loader = self._loader(config.data.train_shards, train=True)
        if val_loader is None and config.data.val_shards:
            val_loader = self._loader(config.data.val_shards, train=False)
        self.train_loader: BatchSource = train_loader
        self.val_loader: Optional[BatchSource] = val_loader
        steps_per_epoch = max(1, len(self.train_loader) // config.train.grad_accum)
        optimizer = build_optimizer(parameter_groups(model, config.optim.lr, config.optim.weight_decay), config.optim)
        self.lr_schedule = LearningRateSchedule(optimizer, config.optim,
                                                total_steps=steps_per_epoch * config.train.epochs)
        self.pos_weight = None
        if config.train.class_weights:
            self.pos_weight = torch.tensor(positive_weight(config.data), device=context.device)
        self.engine: Engine = build_engine(config.train.engine, model, optimizer, self.lr_schedule, config.train,
                                           context, config.data.batch_size)
        self.model = self.engine.module
        seed_everything(config.seed + 1000 * context.rank)  # dropout etc. differ per rank, reproducibly

        self.state = TrainState()
        self.calibration = None  # rank 0: (step, Calibration) fitted on the last validation
        self.logger = None
        self.complete = False  # train() found the run already finished and did nothing
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=context.device)  # since the last check
        self._checked_step = 0

    def _loader(self, shards, train):
        return VideoLoader(shards, self.clip, self.config.data, train=train, device=self.context.device,
                           seed=self.config.seed)

    # -- state ---------------------------------------------------------------------------------------------

    def state_dict(self):
        return dataclasses.asdict(self.state)

    def load_state_dict(self, state):
        fields = {field.name for field in dataclasses.fields(TrainState)}
        unknown = sorted(set(state) - fields)
        if unknown:
            raise DfdError(f"checkpoint state has unknown fields {unknown}: written by another version?")
        if "stopped_early" not in state:  # a checkpoint from before the field: early stopping stopped it exactly
            patience = self.config.train.patience  # when it saved bad_epochs >= patience (it then always stops)
            state = {**state, "stopped_early": bool(patience) and state.get("bad_epochs", 0) >= patience}
        self.state = TrainState(**state)
        self._checked_step = self.state.step

    def finished(self):
        """Nothing left to train: every epoch of ``train.epochs`` done, or early stopping ended the run and, with
        the patience configured now, still would."""
        state, train = self.state, self.config.train
        if state.epoch >= train.epochs:
            return True
        return state.stopped_early and bool(train.patience) and state.bad_epochs >= train.patience

    def save_checkpoint(self, tag):
        """Checkpoint ``tag`` (last, best) with the engine's states, the loop state and detector.json; never
        one holding non-finite weights (a finite loss can still take an inf step)."""
        self.check_finite()
        self.sync_buffers()  # the checkpoint holds one copy of them: the one every rank goes on with
        finite = all(bool(torch.isfinite(value).all()) for value in self.model.state_dict().values()
                     if value.is_floating_point())  # BatchNorm statistics too
        if any_rank(not finite, self.context.device):
            raise NonFiniteLoss(f"the weights became non-finite at step {self.state.step}: training diverged; "
                                f"{self._last_good()}")
        save_checkpoint(self.engine, self.run_dir, tag, self.state_dict(), self.context, trained_only=self.trained_only,
                        json_files={SETTINGS_FILE: self.checkpoint_settings().to_json()})

    def checkpoint_settings(self):
        """The detector settings saved with a checkpoint: calibrated on the validation of the very weights being
        saved (rank 0); a mid-epoch checkpoint, not validated yet, is saved uncalibrated."""
        if self.calibration is not None and self.calibration[0] == self.state.step:
            return calibrated(self.settings, self.calibration[1])
        return self.settings

    def resume(self, mode="auto"):
        """Load ``checkpoints/last`` (mode auto: when present; must: or fail; never: start afresh)."""
        checkpoint = find_checkpoint(self.run_dir, "last") if mode != "never" else None
        if mode == "must" and checkpoint is None:
            raise DfdError(f"{self.run_dir}: --resume given but there is no checkpoint to resume from")
        if checkpoint:
            base = self.settings.base if self.trained_only else None
            self.load_state_dict(load_checkpoint(self.engine, checkpoint, self.context, base=base))
        return checkpoint

    # -- steps ---------------------------------------------------------------------------------------------

    def begin_epoch(self, epoch):
        """Fine-tuning phase, learning rate, loader draw and train mode for ``epoch`` (0-based)."""
        phase = apply_phase(self.model, self.schedule, epoch, self.engine.optimizer)
        self.lr_schedule.apply()
        self.train_loader.set_epoch(epoch)
        self.engine.model.train()
        freeze_batchnorm_statistics(self.model.backbone, everything=phase.backbone_lr_scale == 0)

    def train_step(self, batch):
        """One micro-batch: forward, loss, backward, and the optimizer step at an accumulation boundary.

        Nothing here waits for the device: the loss's finiteness is folded into a flag on the device, which
        ``check_finite`` reads at log and checkpoint steps.
        """
        inputs = batch["features"] if self.embeddings else batch["frames"]
        with self.engine.micro_step():
            video_logits, _ = self.engine.forward(inputs, batch["mask"])
            loss = video_bce(video_logits, batch["label"], self.config.train.label_smoothing, self.pos_weight)
            if self.regularizer is not None:  # e.g. svd_residual: Effort's orthogonality and singular-value terms
                loss = loss + self.regularizer()
            self._nonfinite |= ~torch.isfinite(loss.detach())
            self.engine.backward(loss)
        stepped = self.engine.step()
        if stepped:
            self.state.step += 1
        return StepResult(loss.detach(), stepped)

    def check_finite(self):
        """Stop every rank together when any rank saw a non-finite loss since the last check (one sync)."""
        if any_rank(self._nonfinite, self.context.device):
            raise NonFiniteLoss(f"non-finite loss between steps {self._checked_step + 1} and {self.state.step}: "
                                f"training diverged; {self._last_good()}")
        self._checked_step = self.state.step

    def sync_buffers(self):
        """Make every rank's floating-point buffers (BatchNorm running statistics) their mean over the ranks.

        Each rank updates its BatchNorm statistics from its own batches (DeepSpeed never syncs buffers; DDP
        broadcasts rank 0's before each forward, then every rank updates its copy), but a checkpoint saves
        rank 0's copy only. Without this, rank 1 validated its videos with statistics no checkpoint holds, and a
        resumed rank 1 went on from rank 0's: the validation after a 2-rank resume differed from the
        uninterrupted run's (the training losses did not: train mode uses batch statistics). Called before
        validation and before every checkpoint, so every rank scores with, and goes on from, exactly what the
        checkpoint holds. The mean is taken in float64 (float32 values of similar size add exactly there, in
        any order) and is exact for buffers the ranks already agree on (constants, SyncBatchNorm's or frozen
        statistics). One collective."""
        if self.context.world_size == 1:
            return
        buffers = [buffer for buffer in self.model.buffers() if buffer.is_floating_point()]
        if not buffers:
            return
        with torch.no_grad():
            total = torch.cat([buffer.reshape(-1).to(torch.float64) for buffer in buffers])
            torch.distributed.all_reduce(total)
            total /= self.context.world_size
            for buffer, mean in zip(buffers, torch.split(total, [buffer.numel() for buffer in buffers])):
                buffer.copy_(mean.view_as(buffer))

    def _last_good(self):
        return (f"the last good checkpoint is {find_checkpoint(self.run_dir) or 'none yet'} (lower optim.lr, or "
                "set train.grad_clip)")

    def validate(self):
        """Validation metrics (rank 0 computes them, every rank gets them), ``loss`` included. Stops every rank
        with one line when no validation video could be scored (all skipped, or none there)."""
        if self.val_loader is None:
            raise DfdError("data.val_shards is not set: there is nothing to validate on")
        skipped_before = len(self.val_loader.skipped)
        self.sync_buffers()  # every rank scores with the same model: the one the next checkpoint saves
        metrics, records = validation_metrics(self.model, self.val_loader, self.context.device,
                                              self.config.train.threshold, self.config.train.precision,
                                              self.embeddings)
        if records:  # rank 0: temperature and threshold for the checkpoints of these weights
            train = self.config.train
            self.calibration = (self.state.step, fit_calibration(
                [record["video_logit"] for record in records], [record["label"] for record in records],
                train.threshold_rule, train.threshold, calibrate=train.calibrate, fallback=True,
                fitted_on=f"validation after epoch {self.state.epoch}, step {self.state.step} "
                          f"({len(records)} videos)"))
        skipped = gather_to_rank0(self.val_loader.skipped[skipped_before:])  # this pass's, from every rank
        self._gather_storage_retries()
        problem = None
        if self.context.is_main and not metrics.get("videos"):
            problem = f"no validation video could be scored: {skipped_summary(skipped)} — check data.val_shards"
        raise_together(problem)
        return broadcast_object(metrics)

    def _gather_storage_retries(self):
        """Add every rank's storage retries since the last call (its loaders' workers' and its own) to
        ``storage_retries`` on rank 0, for the report."""
        faults = collections.Counter(storage.take_fault_counts())
        for loader in (self.train_loader, self.val_loader):
            faults.update(getattr(loader, "io_faults", {}))
            if hasattr(loader, "io_faults"):
                loader.io_faults.clear()
        for counts in gather_to_rank0([dict(faults)]) or []:
            self.storage_retries.update(counts)

    # -- the run -------------------------------------------------------------------------------------------

    def train_epoch(self, epoch):
        """Train ``len(train_loader)`` micro-batches (skipping those a mid-epoch resume already trained)."""
        config, state = self.config, self.state
        skip = state.batch_in_epoch
        bar = self.logger.progress(len(self.train_loader), f"epoch {epoch + 1}/{config.train.epochs}",
                                   enabled=self.progress)
        bar.update(skip)
        tick, window_samples = time.time(), 0
        for index, batch in enumerate(self.train_loader):
            if index < skip:
                continue
            result = self.train_step(batch)
            state.batch_in_epoch = index + 1
            samples = len(batch["key"]) * self.context.world_size
            window_samples += samples
            state.samples += samples
            bar.update(1)
            if not result.stepped:
                continue
            if state.step % config.train.log_every == 0:
                self.check_finite()
                seconds = max(time.time() - tick, 1e-9)
                groups = self.engine.optimizer.param_groups
                loss, lr = result.loss.item(), groups[-1]["lr"]  # the head's
                values = {"loss": loss, "lr": lr}
                # the backbone's rate too (curves.png): it differs by finetune.backbone_lr_scale, 0 while frozen
                backbone = [group["lr"] for group in groups if str(group.get("name", "")).startswith("backbone")]
                if backbone:
                    values["lr_backbone"] = backbone[0]
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{window_samples / seconds:.1f}")
                self.logger.log(state.step, {**values, "samples_per_s": window_samples / seconds,
                                             "frames_per_s": window_samples * self.clip.sampler.num_frames / seconds,
                                             **system_values(self.context.device)}, kind="train", epoch=epoch + 1)
                state.train_seconds += seconds
                tick, window_samples = time.time(), 0
            if config.train.checkpoint_every and state.step % config.train.checkpoint_every == 0:
                self.save_checkpoint("last")
        bar.close()
        state.train_seconds += time.time() - tick
        state.epoch, state.batch_in_epoch = epoch + 1, 0

    def end_epoch(self, epoch, metrics):
        """Track the best epoch, checkpoint last (and best); True when early stopping says stop."""
        config, state = self.config.train, self.state
        value = metric_value(metrics, config.early_stopping_metric)
        better = improved(value, state.best, config.early_stopping_mode)
        sources = epoch_sources(self.train_loader)  # data.train_sources: every rank's counts (one gather), rank 0
        if self.context.is_main:
            self.logger.log(state.step, {"val": metrics, **source_values(sources)}, kind="eval", epoch=epoch + 1)
            self.directory.redraw_curves(self.config.name)
            self.logger.print_eval_table(epoch + 1, f"val loss {format_number(metrics.get('loss'))}\n"
                                                    + format_metrics_table(metrics) + "\ncalibration: "
                                                    + describe_calibration(self.checkpoint_settings().calibration)
                                                    + (f"\n{describe_sources(sources)}" if sources else ""))
        if better:
            state.best, state.best_epoch, state.bad_epochs, state.best_metrics = value, epoch + 1, 0, metrics
        else:
            state.bad_epochs += 1
        # in the checkpoint: a finished early-stopped run must not train on when started again
        state.stopped_early = bool(config.patience) and state.bad_epochs >= config.patience
        if better:  # best before last: a last that names this epoch as best is only written once best exists
            self.save_checkpoint("best")
        self.save_checkpoint("last")
        if state.stopped_early and self.context.is_main:
            print(f"early stopping: {config.early_stopping_metric} has not improved for {state.bad_epochs} "
                  f"epochs (best {format_number(state.best)} at epoch {state.best_epoch})")
        return state.stopped_early

    def train(self, resume="auto"):
        """The whole run on this rank; returns the report dict (rank 0) or None."""
        if self.val_loader is None:
            raise DfdError("data.val_shards is not set: training validates after every epoch")
        lock = self.directory.open()
        try:
            return self._train(resume)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, resume):
        started, config, context = time.time(), self.config, self.context
        checkpoint = self.resume(resume)
        state = self.state  # after resume: it replaces the state
        if checkpoint and self.finished():  # every rank loaded the same state: all return here together
            return self._already_finished()
        config = resolved_run_config(config, self.run_dir)  # config.yaml and W&B: absolute run_dir, WANDB_MODE
        self.directory.write_config(config)  # not before: a finished run keeps the config.yaml it was trained with
        wandb = config.logger.wandb
        self.logger = RunLogger(self.run_dir, context.rank, config_to_dict(config), wandb_mode=wandb.mode,
                                project=wandb.project, run_name=wandb.name or config.name, tags=tuple(wandb.tags),
                                group=wandb.group or None, resume_step=state.step)  # rows after it go
        if checkpoint and context.is_main:
            print(f"resuming {self.run_dir} from epoch {state.epoch}, step {state.step}")
        state.stopped_early = False  # resumed: a raised train.patience lets it train on
        last_metrics, failed = None, True
        try:
            for epoch in range(state.epoch, config.train.epochs):
                self.begin_epoch(epoch)
                self.train_epoch(epoch)
                self.check_finite()
                last_metrics = self.validate()
                if self.end_epoch(epoch, last_metrics):
                    break
            failed = False
        finally:
            report = None
            if context.is_main:
                report = run_report(self, last_metrics, state.stopped_early, time.time() - started)
                try:
                    self.directory.write_report(report)
                    self.logger.close(summary={"best": self.state.best, "best_epoch": report["best_epoch"]})
                except OSError as error:
                    if not failed:
                        raise
                    # the error that stopped the run (a full disk, say) is the one to read, not this echo of it
                    log.warning("%s: %s not written (%s)", self.run_dir, REPORT_FILE, error)
        # after a run that ended normally only: a rank that failed alone (its loader stopped) must exit rather
        # than wait here for the others, so that the launcher sees the failure and stops every rank
        barrier()
        return report

    def _already_finished(self):
        """A finished run started again: one line (rank 0) and its report.json as it is (written from the
        checkpoint if a kill came between the last checkpoint and the report); no W&B run, nothing else written."""
        self.complete = True
        state, train, report = self.state, self.config.train, None
        if self.context.is_main:
            how = (f"stopped early after {state.epoch}/{train.epochs} epochs" if state.epoch < train.epochs
                   else f"{state.epoch}/{train.epochs} epochs")
            more = "train.patience" if state.epoch < train.epochs else "train.epochs"
            print(f"{self.run_dir}: training is complete ({how}; best {train.early_stopping_metric} "
                  f"{format_number(state.best)} at epoch {state.best_epoch}); nothing to do (raise {more} to "
                  "train on)")
            report = self.directory.read_report()
            if report is None:  # killed after its last checkpoint but before the report: write it now
                report = run_report(self, None, state.stopped_early, 0.0)
                self.directory.write_report(report)
        barrier()
        return report


def train(config, resume="auto", progress=True, train_loader=None):
    """Shorthand: ``Trainer(config, train_loader=train_loader, progress=progress).train(resume)``."""
    return Trainer(config, train_loader=train_loader, progress=progress).train(resume)
