"""Run under torchrun (or alone): a few optimizer steps of the real engine on fixed data; save the weights.

argv: engine (ddp|deepspeed), ZeRO stage, steps, output prefix, frozen_epochs (0 = all trainable).
The global batch is 4 clips whatever the world size (each rank takes its slice), so the weights after the
steps must match a single-process run with the same global batch. BatchNorm statistics are frozen and the
head has no dropout: with per-rank BatchNorm batches and random dropout, runs would legitimately differ.
"""

import sys

import torch

from dfdtrain.config import OptimConfig, TrainConfig
from dfdtrain.engine.distributed import cleanup, init_distributed
from dfdtrain.engine.engines import build_engine
from dfdtrain.engine.optim import LearningRateSchedule, build_optimizer
from dfdtrain.engine.train import bce_loss
from dfdtrain.models.detector import build_detector
from dfdtrain.models.finetune import (FinetuneSchedule, apply_phase, freeze_batchnorm_statistics, parameter_groups,
                                      prepare_trainable)

GLOBAL_BATCH = 4


def main(engine_name, zero_stage, steps, out_prefix, frozen_epochs):
    context = init_distributed("cpu")
    torch.manual_seed(0)
    model = build_detector("mobilenetv2_050", "gru", head_options={"hidden_size": 16, "hidden": [8], "dropout": 0.0})
    schedule = FinetuneSchedule(frozen_epochs=int(frozen_epochs), freeze_batchnorm=True)
    prepare_trainable(model, schedule)
    # SGD: its update is linear in the gradient, so float summation order cannot flip it (Adam divides a
    # near-zero gradient by its own magnitude: the sign of rounding noise would decide the update)
    optim = OptimConfig(optimizer="sgd", lr=0.05, weight_decay=0.01, schedule="cosine", warmup_steps=1)
    optimizer = build_optimizer(parameter_groups(model, optim.lr, optim.weight_decay), optim)
    lr_schedule = LearningRateSchedule(optimizer, optim, total_steps=int(steps))
    per_rank = GLOBAL_BATCH // context.world_size
    train = TrainConfig(engine=engine_name, zero_stage=int(zero_stage), grad_clip=1.0)
    engine = build_engine(engine_name, model, optimizer, lr_schedule, train, context, per_rank)
    apply_phase(engine.module, schedule, 0, engine.optimizer)
    lr_schedule.apply()

    data = torch.Generator().manual_seed(1)
    frames = torch.randn(int(steps) * GLOBAL_BATCH, 3, 3, 32, 32, generator=data)
    labels = torch.randint(0, 2, (int(steps) * GLOBAL_BATCH,), generator=data).float()
    mask = torch.ones(GLOBAL_BATCH, 3, dtype=torch.bool)
    mask[1, 2] = False  # a padded frame, as real batches have
    before = {name: value.detach().clone() for name, value in engine.module.state_dict().items()}
    for step in range(int(steps)):
        engine.model.train()
        freeze_batchnorm_statistics(engine.module)
        start = step * GLOBAL_BATCH + context.rank * per_rank
        rows = slice(start, start + per_rank)
        rank_mask = mask[context.rank * per_rank: (context.rank + 1) * per_rank]
        with engine.micro_step():
            video_logits, _ = engine.forward(frames[rows], rank_mask)
            engine.backward(bce_loss(video_logits, labels[rows], 0.0, None))
        assert engine.step()
    after = engine.module.state_dict()
    torch.save({"before": before, "after": {name: value.detach().clone() for name, value in after.items()}},
               f"{out_prefix}.rank{context.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:])
