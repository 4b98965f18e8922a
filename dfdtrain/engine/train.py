"""The training loop: train an epoch -> evaluate -> log -> checkpoint, until done or stopped early.

One readable function, ``train(config)``, run on every rank (torchrun, the deepspeed launcher or srun).
The run directory holds the resolved ``config.yaml``, ``metrics.jsonl``, ``checkpoints/{last,best}`` and,
at the end, ``report.json``. A run resumes from ``checkpoints/last`` (mid-epoch too: the loader is
deterministic per epoch, so the batches already trained are replayed without training), and a non-finite
loss stops every rank with a clear message, leaving the last good checkpoint as it was.
"""

import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from dfdtrain.config import config_to_dict, save_config
from dfdtrain.data.loader import VideoLoader, expand_shards, loader_config, positive_class_weight
from dfdtrain.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from dfdtrain.engine.distributed import any_rank, barrier, broadcast_object, init_distributed
from dfdtrain.engine.engines import build_engine
from dfdtrain.engine.evaluate import evaluate
from dfdtrain.engine.logging import RunLogger, system_values
from dfdtrain.engine.optim import LearningRateSchedule, build_optimizer
from dfdtrain.errors import DfdError
from dfdtrain.fileio import write_json
from dfdtrain.metrics import format_metrics_table
from dfdtrain.models.detector import build_detector_from_config
from dfdtrain.models.embed import input_settings
from dfdtrain.models.finetune import (FinetuneSchedule, apply_phase, freeze_batchnorm_statistics, parameter_groups,
                                      prepare_trainable, set_trainable_stages)


class NonFiniteLoss(DfdError):
    pass


def run_directory(config):
    return config.run_dir or os.path.join("runs", config.name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def metric_value(metrics, path):
    """``val_loss`` or a dotted path into the metrics dict (``video.head.auc``)."""
    if path == "val_loss":
        return metrics.get("loss")
    value = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DfdError(f"train.early_stopping_metric {path!r} is not in the validation metrics")
        value = value[part]
    return value


def improved(value, best, mode):
    if value is None:
        return False
    return best is None or (value < best if mode == "min" else value > best)


def bce_loss(video_logits, labels, label_smoothing, pos_weight):
    targets = labels * (1 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(video_logits.float(), targets, pos_weight=pos_weight)


def checkpoint_if_finite(engine, model, run_dir, tag, state, context):
    """Save, unless the weights went non-finite (a finite loss can still take an inf step): never save those."""
    finite = all(bool(torch.isfinite(value).all()) for value in model.state_dict().values()
                 if value.is_floating_point())  # BatchNorm statistics too
    if any_rank(not finite, context.device):
        raise NonFiniteLoss(f"the weights became non-finite at step {state['step']}: training diverged; the last "
                            f"good checkpoint is {find_checkpoint(run_dir) or 'none yet'} (lower optim.lr, or set "
                            "train.grad_clip)")
    save_checkpoint(engine, run_dir, tag, state, context)


def train(config, resume="auto", progress=True, train_loader=None):
    """Train ``config`` (an ExperimentConfig) on this rank; returns the report dict (rank 0) or None.

    ``train_loader``: batches to train from instead of the VideoLoader over ``config.data.train_shards``
    (the end-to-end benchmark feeds one batch already on the device, to see whether the loader starves the
    model); it needs ``len()``, ``set_epoch(epoch)``, iteration and a ``skipped`` list, like VideoLoader.
    """
    started = time.time()
    context = init_distributed(config.train.device)
    run_dir = run_directory(config)
    embeddings = config.data.source == "embeddings"
    if context.is_main:
        os.makedirs(run_dir, exist_ok=True)
        save_config(config, os.path.join(run_dir, "config.yaml"))

    seed_everything(config.seed)  # the same initial weights on every rank
    model = build_detector_from_config(config.model)
    image_size, input_config = input_settings(config, model)
    schedule = FinetuneSchedule.from_config(config.finetune)
    prepare_trainable(model, schedule)
    if embeddings:  # cached features: the backbone is not run, so it cannot train
        set_trainable_stages(model, 0)
    if config.model.sync_batchnorm and context.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    source = "embeddings" if embeddings else "videos"
    train_shards = expand_shards(config.data.train_shards)
    if train_loader is None:
        train_loader = VideoLoader(loader_config(config.data, train_shards, image_size, config.seed), train=True,
                                   input_config=input_config, device=context.device, source=source,
                                   augment=config.data.augment)
    val_loader = VideoLoader(loader_config(config.data, config.data.val_shards, image_size, config.seed),
                             train=False, input_config=input_config, device=context.device, source=source)
    steps_per_epoch = max(1, len(train_loader) // config.train.grad_accum)
    optimizer = build_optimizer(parameter_groups(model, config.optim.lr, config.optim.weight_decay), config.optim)
    lr_schedule = LearningRateSchedule(optimizer, config.optim, total_steps=steps_per_epoch * config.train.epochs)
    pos_weight = None
    if config.train.class_weights:
        pos_weight = torch.tensor(positive_class_weight(train_shards), device=context.device)
    engine = build_engine(config.train.engine, model, optimizer, lr_schedule, config.train, context,
                          config.data.batch_size)
    model = engine.module
    seed_everything(config.seed + 1000 * context.rank)  # dropout etc. differ per rank, reproducibly

    state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "best": None, "best_epoch": None, "bad_epochs": 0,
             "samples": 0, "train_seconds": 0.0}
    checkpoint = find_checkpoint(run_dir, "last") if resume != "never" else None
    if resume == "must" and checkpoint is None:
        raise DfdError(f"{run_dir}: --resume given but there is no checkpoint to resume from")
    if checkpoint:
        state = load_checkpoint(engine, checkpoint, context)

    wandb = config.logger.wandb
    logger = RunLogger(run_dir, context.rank, config_to_dict(config), wandb_mode=wandb.mode, project=wandb.project,
                       run_name=wandb.name or config.name, tags=tuple(wandb.tags), group=wandb.group or None)
    if checkpoint and context.is_main:
        print(f"resuming {run_dir} from epoch {state['epoch']}, step {state['step']}")
    last_metrics, stop = None, False
    try:
        for epoch in range(state["epoch"], config.train.epochs):
            phase = apply_phase(model, schedule, epoch, engine.optimizer)
            lr_schedule.apply()
            train_loader.set_epoch(epoch)
            engine.model.train()
            freeze_batchnorm_statistics(model.backbone, everything=phase.backbone_lr_scale == 0)
            skip = state["batch_in_epoch"]  # micro-batches of this epoch already trained (resume)
            bar = logger.progress(len(train_loader), f"epoch {epoch + 1}/{config.train.epochs}", enabled=progress)
            bar.update(skip)
            tick, window_samples = time.time(), 0
            for index, batch in enumerate(train_loader):
                if index < skip:
                    continue
                inputs = batch["features"] if embeddings else batch["frames"]
                with engine.micro_step():
                    video_logits, _ = engine.forward(inputs, batch["mask"])
                    loss = bce_loss(video_logits, batch["label"], config.train.label_smoothing, pos_weight)
                    if any_rank(not torch.isfinite(loss).item(), context.device):
                        raise NonFiniteLoss(
                            f"non-finite loss at epoch {epoch + 1}, step {state['step']}: training diverged; "
                            f"the last good checkpoint is {find_checkpoint(run_dir) or 'none yet'} "
                            "(lower optim.lr, or set train.grad_clip)")
                    engine.backward(loss)
                stepped = engine.step()
                state["batch_in_epoch"] = index + 1
                window_samples += len(batch["key"]) * context.world_size
                state["samples"] += len(batch["key"]) * context.world_size
                bar.update(1)
                if not stepped:
                    continue
                state["step"] += 1
                if state["step"] % config.train.log_every == 0:  # loss.item() syncs a GPU: only when logging
                    seconds = max(time.time() - tick, 1e-9)
                    lr = engine.optimizer.param_groups[-1]["lr"]
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}",
                                    samples_s=f"{window_samples / seconds:.1f}")
                    logger.log(state["step"], {"loss": loss.item(), "lr": lr,
                                               "samples_per_s": window_samples / seconds,
                                               "frames_per_s": window_samples * config.data.num_frames / seconds,
                                               **system_values(context.device)}, kind="train", epoch=epoch + 1)
                    state["train_seconds"] += seconds
                    tick, window_samples = time.time(), 0
                if config.train.checkpoint_every and state["step"] % config.train.checkpoint_every == 0:
                    checkpoint_if_finite(engine, model, run_dir, "last", state, context)
            bar.close()
            state["train_seconds"] += time.time() - tick
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0

            metrics, _ = evaluate(model, val_loader, context, config.train.threshold, config.train.precision,
                                  embeddings)
            decision = None
            if context.is_main:
                value = metric_value(metrics, config.train.early_stopping_metric)
                better = improved(value, state["best"], config.train.early_stopping_mode)
                decision = {"better": better, "value": value, "metrics": metrics}
                logger.log(state["step"], {"val": metrics}, kind="eval", epoch=epoch + 1)
                logger.print_eval_table(epoch + 1, f"val loss {metrics['loss']:.4f}\n" + format_metrics_table(metrics))
            decision = broadcast_object(decision)
            last_metrics = decision["metrics"]
            if decision["better"]:
                state["best"], state["best_epoch"], state["bad_epochs"] = decision["value"], epoch + 1, 0
                state["best_metrics"] = decision["metrics"]
            else:
                state["bad_epochs"] += 1
            checkpoint_if_finite(engine, model, run_dir, "last", state, context)
            if decision["better"]:
                save_checkpoint(engine, run_dir, "best", state, context)
            if config.train.patience and state["bad_epochs"] >= config.train.patience:
                stop = True
                if context.is_main:
                    print(f"early stopping: {config.train.early_stopping_metric} has not improved for "
                          f"{state['bad_epochs']} epochs (best {state['best']} at epoch {state['best_epoch']})")
                break
    finally:
        report = None
        if context.is_main:
            report = build_report(config, context, run_dir, state, last_metrics, train_loader, val_loader,
                                  engine, stop, time.time() - started)
            write_json(os.path.join(run_dir, "report.json"), report)
            logger.close(summary={"best": state["best"], "best_epoch": state["best_epoch"]})
        barrier()
    return report


def build_report(config, context, run_dir, state, last_metrics, train_loader, val_loader, engine, stopped_early,
                 seconds):
    best = state.get("best_metrics") or last_metrics or {}
    video = (best.get("video") or {}).get("head") or {}
    return {
        "name": config.name,
        "engine": engine.name,
        "world_size": context.world_size,
        "device": str(context.device),
        "epochs_run": state["epoch"],
        "steps": state["step"],
        "stopped_early": stopped_early,
        "checkpoint": find_checkpoint(run_dir, "best") or find_checkpoint(run_dir, "last"),
        "best_epoch": state["best_epoch"],
        "early_stopping_metric": config.train.early_stopping_metric,
        "val": {"loss": best.get("loss"), "video": video, "video_rules": best.get("video"),
                "frame": best.get("frame")},
        "last_val": last_metrics,
        "skipped": {"train": len(train_loader.skipped), "val": len(val_loader.skipped),
                    "samples": (train_loader.skipped + val_loader.skipped)[:100]},
        "throughput": {"samples_per_s": state["samples"] / max(state["train_seconds"], 1e-9),
                       "frames_per_s": state["samples"] * config.data.num_frames / max(state["train_seconds"], 1e-9)},
        "wall_seconds": round(seconds, 1),
    }


def load_report(run_dir):
    with open(os.path.join(run_dir, "report.json")) as handle:
        return json.load(handle)
