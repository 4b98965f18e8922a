"""The training loop's own state: ``TrainState`` (epoch, step, mid-epoch position, samples, the best epoch and
early stopping's count; saved in every checkpoint beside the engine's weights, optimizer and schedule, and
restored by ``Trainer.load_state_dict``), ``StepResult`` (what one ``Trainer.train_step`` returns) and
``improved``, the early-stopping comparison of a validation value with the best so far.
"""

import dataclasses
from typing import Optional

import torch


@dataclasses.dataclass
class TrainState:
    """The loop's own state, saved in every checkpoint (the engine saves weights, optimizer and schedule)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained (mid-epoch resume)
    samples: int = 0  # training samples seen, over all ranks
    train_seconds: float = 0.0
    best: Optional[float] = None  # best value of train.early_stopping_metric so far
    best_epoch: Optional[int] = None
    best_metrics: Optional[dict] = None
    bad_epochs: int = 0  # epochs since the best
    stopped_early: bool = False  # early stopping ended the run (so starting it again has nothing to do)


@dataclasses.dataclass
class StepResult:
    loss: torch.Tensor  # this micro-batch's loss, still on the device (reading it syncs)
    stepped: bool  # an optimizer step happened (the last micro-batch of gradient accumulation)


def improved(value, best, mode):
    if value is None:
        return False
    return best is None or (value < best if mode == "min" else value > best)
