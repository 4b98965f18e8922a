"""Optimizers and learning-rate schedules, each family a registry (``OPTIMIZERS``, ``SCHEDULES``) whose names the
config's ``optim.optimizer`` and ``optim.schedule`` take (checked by ``dfdtrain.checks.check_experiment``).

Each optimizer group carries ``base_lr`` (the peak rate) and ``lr_scale`` (the fine-tuning phase's factor:
0 while a backbone is frozen). The schedule sets ``lr = base_lr x lr_scale x factor(step)`` on every step,
so a phase change and the warmup/decay compose instead of overwriting each other.
"""

import math

import torch

from dfdtrain.core.registry import Registry

# ``optim.optimizer`` names one: (parameter groups, the optim config) -> a torch optimizer
OPTIMIZERS = Registry("optimizer")
# ``optim.schedule`` names one: (progress in [0, 1] after warmup, min_lr_ratio, poly_power) -> the factor of the peak
SCHEDULES = Registry("schedule")


@OPTIMIZERS.register("adamw")
def _adamw(groups, optim):
    return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(groups, optim):
    return torch.optim.Adam(groups, lr=optim.lr)


@OPTIMIZERS.register("sgd")
def _sgd(groups, optim):
    """Nesterov momentum."""
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=True,
                           weight_decay=optim.weight_decay)


@SCHEDULES.register("cosine")
def _cosine(progress, min_lr_ratio, poly_power):
    decay = 0.5 * (1 + math.cos(math.pi * progress))
    return min_lr_ratio + (1 - min_lr_ratio) * decay


@SCHEDULES.register("poly")
def _poly(progress, min_lr_ratio, poly_power):
    decay = (1 - progress) ** poly_power
    return min_lr_ratio + (1 - min_lr_ratio) * decay


@SCHEDULES.register("constant")
def _constant(progress, min_lr_ratio, poly_power):
    return 1.0


def build_optimizer(groups, optim):
    """A torch optimizer over parameter groups (dfdtrain.models.finetune.parameter_groups)."""
    for group in groups:  # the head's rate is the base; a backbone group differs by its lr_scale
        group["base_lr"] = optim.lr
        group.setdefault("lr_scale", 1.0)
    return OPTIMIZERS.get(optim.optimizer)(groups, optim)


class LearningRateSchedule:
    """Linear warmup, then cosine / polynomial decay to ``min_lr_ratio`` x peak (or constant).

    Has ``step()``, ``state_dict()`` and ``load_state_dict()``, so DeepSpeed can drive it as its scheduler.
    """

    def __init__(self, optimizer, optim, total_steps):
        self.after_warmup = SCHEDULES.get(optim.schedule)  # an unknown name fails first, with the known ones
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
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.after_warmup(progress, self.min_lr_ratio, self.poly_power)

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
