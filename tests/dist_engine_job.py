"""Run under torchrun (or alone): a few optimizer steps of the real Trainer on fixed data; save the weights.

argv: engine (ddp|deepspeed), ZeRO stage, steps, output prefix, frozen_epochs (0 = all trainable).
The global batch is 4 clips whatever the world size (each rank takes its slice), so the weights after the
steps must match a single-process run with the same global batch. BatchNorm statistics are frozen and the
head has no dropout: with per-rank BatchNorm batches and random dropout, runs would legitimately differ.
The steps are ``Trainer.train_step``, the training loop's own.
"""

import sys
import tempfile

import torch

from dfdtrain.config import config_from_dict
from dfdtrain.core.distributed import cleanup, rank_and_world
from dfdtrain.testing.batches import GLOBAL_BATCH, FixedBatches
from dfdtrain.training.trainer import Trainer


def main(engine_name, zero_stage, steps, out_prefix, frozen_epochs):
    rank, world_size, _ = rank_and_world()
    steps = int(steps)
    per_rank = GLOBAL_BATCH // world_size
    config = config_from_dict({
        "run_dir": tempfile.mkdtemp(), "seed": 0,
        "model": {"backbone": "mobilenetv2_050", "head": "gru",
                  "head_options": {"hidden_size": 16, "hidden": [8], "dropout": 0.0}},
        "finetune": {"frozen_epochs": int(frozen_epochs), "freeze_batchnorm": True},
        # SGD: its update is linear in the gradient, so float summation order cannot flip it (Adam divides a
        # near-zero gradient by its own magnitude: the sign of rounding noise would decide the update)
        "optim": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.01, "schedule": "cosine", "warmup_steps": 1},
        "train": {"engine": engine_name, "zero_stage": int(zero_stage), "grad_clip": 1.0, "epochs": 1,
                  "device": "cpu"},
        "data": {"batch_size": per_rank},
    })
    trainer = Trainer(config, train_loader=FixedBatches(steps, rank, per_rank))
    before = {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}
    trainer.begin_epoch(0)
    for batch in trainer.train_loader:
        assert trainer.train_step(batch).stepped
    trainer.check_finite()
    after = trainer.model.state_dict()
    torch.save({"before": before, "after": {name: value.detach().clone() for name, value in after.items()}},
               f"{out_prefix}.rank{trainer.context.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:])
