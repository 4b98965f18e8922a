"""Optimizers and learning-rate schedules.

Each optimizer group carries ``base_lr`` (the peak rate) and ``lr_scale`` (the fine-tuning phase's factor:
0 while a backbone is frozen). The schedule sets ``lr = base_lr x lr_scale x factor(step)`` on every step,
so a phase change and the warmup/decay compose instead of overwriting each other.
"""

import math

import torch

from dfdtrain.core.errors import DfdError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "poly", "constant")


def build_optimizer(groups, optim):
    """A torch optimizer over parameter groups (dfdtrain.models.finetune.parameter_groups)."""
    for group in groups:  # the head's rate is the base; a backbone group differs by its lr_scale
        group["base_lr"] = optim.lr
        group.setdefault("lr_scale", 1.0)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "adam":
        return torch.optim.Adam(groups, lr=optim.lr)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=True,
                               weight_decay=optim.weight_decay)
    raise DfdError(f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, not {optim.optimizer!r}")


class LearningRateSchedule:
    """Linear warmup, then cosine / polynomial decay to ``min_lr_ratio`` x peak (or constant).

    Has ``step()``, ``state_dict()`` and ``load_state_dict()``, so DeepSpeed can drive it as its scheduler.
    """

    def __init__(self, optimizer, optim, total_steps):
        if optim.schedule not in SCHEDULES:
            raise DfdError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, not {optim.schedule!r}")
        self.optimizer = optimizer
        self.schedule = optim.schedule
        self.warmup_steps = optim.warmup_steps
        self.min_lr_ratio = optim.min_lr_ratio
        self.poly_power = optim.poly_power
        self.total_steps = max(1, total_steps)
        self.step_count = 0
        self.apply()

    def factor(self, step):
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else (1 - progress) ** self.poly_power
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * decay

    def apply(self):
        factor = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * group["lr_scale"] * factor

    def step(self):
        self.step_count += 1
        self.apply()

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = state["step_count"]
        self.apply()
