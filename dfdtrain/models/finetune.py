"""Fine-tuning policies: frozen backbone, unfreeze the last N stages, two-phase schedules, frozen BatchNorm.

Stages come from timm's own structure (``backbone_stages``: stem, blocks/stages, final layers), not from a
raw layer count, so "unfreeze the last 2" means the same thing for a ResNet and an EfficientNet.

A backbone frozen for the whole run has ``requires_grad`` off (no gradients computed, not in the optimizer).
A backbone frozen for the first K epochs stays in the optimizer with learning rate 0 and is released by
raising its ``lr_scale``: DDP and DeepSpeed ZeRO fix the set of trained parameters when they wrap the model,
and ZeRO partitions only the parameters it was given, so adding them later would silently never train them.

The other fine-tuning methods (``finetune.method``: layernorm, lora, svd_residual, adapter) are in
``dfdtrain.models.finetune_methods``; ``full`` is this module's policies. ``train_head_only`` is where each of them
starts.
"""

import dataclasses

from torch import nn

from dfdtrain.models.backbones import backbone_stages

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclasses.dataclass
class Phase:
    trainable_stages: int  # backbone stages (from the output side) that train; -1 = all, 0 = none
    backbone_lr_scale: float  # backbone learning rate relative to the head's; 0 while frozen


class FinetuneSchedule:
    """Which backbone stages train in which epoch, and at what learning-rate scale.

    Built from a FinetuneConfig: ``freeze_backbone`` = head only for the whole run; ``frozen_epochs=K`` =
    K epochs head only, then ``unfreeze_last`` stages (-1 all) at ``backbone_lr_scale`` x the head rate.
    """

    def __init__(self, freeze_backbone=False, frozen_epochs=0, unfreeze_last=-1, backbone_lr_scale=0.1,
                 freeze_batchnorm=False):
        if frozen_epochs < 0:
            raise ValueError("frozen_epochs must be >= 0")
        self.freeze_backbone = freeze_backbone
        self.frozen_epochs = frozen_epochs
        self.unfreeze_last = unfreeze_last
        self.backbone_lr_scale = backbone_lr_scale
        self.freeze_batchnorm = freeze_batchnorm

    @classmethod
    def from_config(cls, config):
        return cls(freeze_backbone=config.freeze_backbone, frozen_epochs=config.frozen_epochs,
                   unfreeze_last=config.unfreeze_last, backbone_lr_scale=config.backbone_lr_scale,
                   freeze_batchnorm=config.freeze_batchnorm)  # the schedule's keys (the method's are not its)

    def phase(self, epoch):
        if self.freeze_backbone or epoch < self.frozen_epochs:
            return Phase(trainable_stages=0, backbone_lr_scale=0.0)
        scale = self.backbone_lr_scale if self.frozen_epochs else 1.0
        return Phase(trainable_stages=self.unfreeze_last, backbone_lr_scale=scale)

    def switches_at(self):
        """The epoch at which the backbone starts training (None if never)."""
        return None if self.freeze_backbone else self.frozen_epochs


def set_trainable_stages(detector, trainable_stages):
    """requires_grad for the backbone: the last ``trainable_stages`` stages (-1 all, 0 none); head always."""
    stages = backbone_stages(detector.backbone)
    count = len(stages) if trainable_stages < 0 else min(trainable_stages, len(stages))
    trainable = {name for stage in stages[len(stages) - count:] for name in stage}
    for name, parameter in detector.backbone.named_parameters():
        parameter.requires_grad_(name in trainable)
    for parameter in detector.head.parameters():
        parameter.requires_grad_(True)
    return trainable


def freeze_batchnorm_statistics(module, everything=False):
    """Put frozen BatchNorm layers in eval mode (call after every ``model.train()``).

    Frozen: parameters without requires_grad, layers marked by ``mark_batchnorm_frozen``, or every layer
    with ``everything=True`` (a backbone held at lr 0 in a frozen phase, as Keras' trainable=False does).
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            frozen = all(not parameter.requires_grad for parameter in layer.parameters(recurse=False))
            if everything or frozen or getattr(layer, "_dfdtrain_freeze_stats", False):
                layer.eval()


def mark_batchnorm_frozen(module):
    """Keep every BatchNorm's running statistics fixed, trainable or not (the finetune option)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer._dfdtrain_freeze_stats = True


def parameter_groups(detector, head_lr, weight_decay=0.0, backbone_lr_scale=1.0):
    """Optimizer groups: backbone and head, each split into decayed weights and undecayed biases/norms.

    Only parameters with requires_grad are listed (see ``prepare_trainable``). Each group carries ``name``
    and ``lr_scale`` so a schedule can rescale it: lr = base lr x lr_scale.
    """
    norm_parameters = {id(p) for m in detector.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters()}
    groups = []
    for part, module, scale in (("backbone", detector.backbone, backbone_lr_scale), ("head", detector.head, 1.0)):
        decay, no_decay = [], []
        for parameter in (p for p in module.parameters() if p.requires_grad):
            (no_decay if parameter.ndim <= 1 or id(parameter) in norm_parameters else decay).append(parameter)
        for suffix, params, decay_value in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"params": params, "name": part + suffix, "lr": head_lr * scale,
                               "lr_scale": scale, "weight_decay": decay_value})
    return groups


def prepare_trainable(detector, schedule):
    """requires_grad for every parameter that will ever train under ``schedule`` (call before the optimizer).

    A backbone frozen for the whole run gets requires_grad False (no gradients computed, not in the
    optimizer). A backbone frozen only for the first epochs stays trainable, held still by lr 0 instead:
    DDP and DeepSpeed ZeRO fix the set of trained parameters when they wrap the model.
    """
    final = schedule.phase(10 ** 9)
    set_trainable_stages(detector, final.trainable_stages)
    if schedule.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)


def apply_phase(detector, schedule, epoch, optimizer=None):
    """Set the backbone groups' ``lr_scale`` for ``epoch`` (0 while frozen); returns the Phase.

    The learning-rate schedule multiplies it in (dfdtrain.training.optim.LearningRateSchedule); without one,
    the groups' ``lr`` is set directly from their ``base_lr``.
    """
    phase = schedule.phase(epoch)
    if optimizer is not None:
        for group in optimizer.param_groups:
            if group.get("name", "").startswith("backbone"):
                group["lr_scale"] = phase.backbone_lr_scale
                if "base_lr" in group:
                    group["lr"] = group["base_lr"] * phase.backbone_lr_scale
    return phase


def train_head_only(detector):
    """requires_grad off for the whole backbone, on for the head: where every parameter-efficient method starts."""
    for parameter in detector.backbone.parameters():
        parameter.requires_grad_(False)
    for parameter in detector.head.parameters():
        parameter.requires_grad_(True)
