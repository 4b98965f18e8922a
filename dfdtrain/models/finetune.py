"""Fine-tuning policies: frozen backbone, unfreeze the last N stages, two-phase schedules, frozen BatchNorm.

Stages come from timm's own structure (``backbone_stages``: stem, blocks/stages, final layers), not from a
raw layer count, so "unfreeze the last 2" means the same thing for a ResNet and an EfficientNet.

A backbone frozen for the whole run has ``requires_grad`` off (no gradients computed, not in the optimizer).
A backbone frozen for the first K epochs stays in the optimizer with learning rate 0 and is released by
raising its ``lr_scale``: DDP and DeepSpeed ZeRO fix the set of trained parameters when they wrap the model,
and ZeRO partitions only the parameters it was given, so adding them later would silently never train them.

Methods (``finetune.method``, the ``FINETUNE_METHODS`` registry; each entry ``(detector, finetune_config) -> None``
sets requires_grad and wraps modules, once, before the optimizer is built, so ``parameter_groups`` and ZeRO see
only the tensors that train): ``full`` (the stage policies above), ``layernorm`` (GenD: only the backbone's
LayerNorm affine parameters and the head) and ``lora`` (low-rank A, B beside each targeted frozen nn.Linear).
"""

import dataclasses
import math
import types

import torch
from torch import nn

from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import Registry
from dfdtrain.models.backbones import backbone_stages

FINETUNE_METHODS = Registry("fine-tuning method")

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


# ---------------------------------------------------------------------------------------------- methods
def apply_finetune(detector, config):
    """Apply ``config.method`` (a FinetuneConfig's) to ``detector``: requires_grad, wrapped modules (before the
    optimizer is built; the Trainer and ``dfdtrain model`` both call this)."""
    FINETUNE_METHODS.get(config.method)(detector, config)


def _train_head_only(detector):
    for parameter in detector.backbone.parameters():
        parameter.requires_grad_(False)
    for parameter in detector.head.parameters():
        parameter.requires_grad_(True)


@FINETUNE_METHODS.register("full")
def full_finetune(detector, config):
    """Today's policies: the whole backbone, a frozen one, the last N stages or two phases (``prepare_trainable``)."""
    prepare_trainable(detector, FinetuneSchedule.from_config(config))


@FINETUNE_METHODS.register("layernorm")
def layernorm_finetune(detector, config):
    """GenD (Yermakov et al., WACV'26): only the LayerNorm affine parameters of the backbone train, plus the head.

    The official code (github.com/yermandy/GenD, ``src/model/GenD.py`` ``_freeze_parameters``) freezes the feature
    extractor and re-enables every parameter whose name contains one of ``unfreeze_layers`` (``norm_pre``,
    ``norm1``, ``norm2``, ``norm`` for timm ViTs, ``src/exp/wacv_rebuttal.py``; ``pre_layrnorm``, ``layer_norm1/2``,
    ``post_layernorm`` for HF CLIP). Here: the weight and bias of every ``nn.LayerNorm`` module of the backbone,
    the pre-norm, both norms of each block and the final norm (and ``fc_norm`` where a timm ViT has one) included,
    matched by type rather than by name, so other layers whose name holds "norm" are not caught.
    """
    _train_head_only(detector)
    for layer in detector.backbone.modules():
        if isinstance(layer, nn.LayerNorm):
            for parameter in layer.parameters(recurse=False):
                parameter.requires_grad_(True)
    if config.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)


class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus a trainable low-rank update: ``y = x W^T + b + (x A^T B^T) * alpha / r``.

    As ``loralib.layers.Linear`` (Hu et al. 2021, github.com/microsoft/LoRA ``loralib/layers.py``): A [r, in]
    kaiming-uniform (a=sqrt(5)), B [out, r] zeros, so the layer starts as the original one; no dropout. It keeps
    the original's ``weight`` and ``bias`` tensors (the same names, frozen) and adds ``lora_A``, ``lora_B`` and a
    ``lora_scaling`` buffer (alpha / r, so a state dict can be folded without the config: ``fold_lora_weights``).
    ``merged()`` is a plain nn.Linear with ``W + B A * alpha / r`` folded in (for export).
    """

    def __init__(self, linear, rank, alpha):
        if rank < 1:
            raise ValueError("the LoRA rank must be >= 1")
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.register_buffer("lora_scaling", torch.tensor(self.scaling))  # for fold_lora_weights
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return super().forward(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def delta_weight(self):
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self):
        """A plain nn.Linear computing the same function (W + B A * alpha / r), detached from this one."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def add_lora(module, targets, rank, alpha):
    """Replace every nn.Linear under ``module`` whose last name component is in ``targets`` by a LoRALinear;
    returns the qualified names replaced."""
    replaced = []
    for name, child in list(module.named_modules()):
        for child_name, layer in list(child.named_children()):
            if isinstance(layer, nn.Linear) and not isinstance(layer, LoRALinear) and child_name in targets:
                setattr(child, child_name, LoRALinear(layer, rank, alpha))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced


def merge_lora(module):
    """Replace every LoRALinear under ``module`` by its ``merged()`` nn.Linear (in place); returns ``module``."""
    for child in list(module.modules()):
        for child_name, layer in list(child.named_children()):
            if isinstance(layer, LoRALinear):
                setattr(child, child_name, layer.merged())
    return module


@FINETUNE_METHODS.register("lora")
def lora_finetune(detector, config):
    """LoRA (Hu et al. 2021; github.com/microsoft/LoRA, ``loralib/layers.py``): each backbone nn.Linear named in
    ``finetune.lora_targets`` (by its last name component: timm ViTs' ``qkv``, ``proj``, ``fc1``, ``fc2``) gets a
    rank-``lora_rank`` update scaled by ``lora_alpha / lora_rank``; only ``lora_A``, ``lora_B`` and the head train.
    A backbone with no such layer is refused (nothing of it would train)."""
    _train_head_only(detector)
    replaced = add_lora(detector.backbone, set(config.lora_targets), config.lora_rank, config.lora_alpha)
    if not replaced:
        raise DfdError(f"finetune.lora_targets {list(config.lora_targets)} name no nn.Linear of the backbone "
                         f"{type(detector.backbone).__name__}")
    if config.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)


def fold_lora_weights(weights):
    """A state dict with every LoRA layer's ``lora_A``/``lora_B`` folded into its ``weight`` (the keys a plain
    model has): what a checkpoint trained with ``finetune.method: lora`` holds, for a model built without it."""
    if not any(name.endswith(".lora_A") for name in weights):
        return weights
    folded = dict(weights)
    for name in [name for name in weights if name.endswith(".lora_A")]:
        prefix = name[: -len("lora_A")]
        a, b = folded.pop(name), folded.pop(prefix + "lora_B")
        weight = folded[prefix + "weight"]
        scaling = folded.pop(prefix + "lora_scaling").item()
        folded[prefix + "weight"] = (weight.float() + (b.float() @ a.float()) * scaling).to(weight.dtype)
    return folded


def finetune_method(config):
    """What a FinetuneConfig does, in words for ``dfdtrain model``: full, frozen backbone, two-phase, layernorm
    (GenD) or lora (rank, alpha, targets)."""
    if config.method == "layernorm":
        return "layernorm (GenD: LayerNorm affine parameters + head)"
    if config.method == "lora":
        return f"lora (rank {config.lora_rank}, alpha {config.lora_alpha:g}, {', '.join(config.lora_targets)})"
    if config.freeze_backbone:
        return "frozen backbone"
    return "two-phase" if config.frozen_epochs else "full"


def trained_phases(detector, config, backbone_runs=True):
    """``[(first epoch, [parameters that train from it])]`` of ``detector`` under a FinetuneConfig, one entry per
    phase (two for a two-phase schedule). ``backbone_runs=False``: cached features (data.source: embeddings),
    the backbone never trains. Applies the method to ``detector`` as training would (requires_grad, LoRA layers);
    which parameters train in which phase comes from ``parameter_groups`` and ``apply_phase`` (a group at
    lr_scale 0 is held still)."""
    schedule = FinetuneSchedule.from_config(config)
    apply_finetune(detector, config)  # as the Trainer applies it
    if not backbone_runs:
        set_trainable_stages(detector, 0)
    groups = parameter_groups(detector, head_lr=1.0)
    optimizer = types.SimpleNamespace(param_groups=groups)
    phases = []
    for epoch in sorted({0, schedule.switches_at() or 0}):
        apply_phase(detector, schedule, epoch, optimizer)
        phases.append((epoch, [p for group in groups if group["lr_scale"] > 0 for p in group["params"]]))
    return phases
