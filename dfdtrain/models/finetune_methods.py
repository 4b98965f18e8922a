"""Fine-tuning methods: the ``finetune.method`` registry (``FINETUNE_METHODS``) and what every method shares.

A method is one entry ``(detector, finetune_config) -> None | regularizer``. Applied once, before the optimizer is
built (``apply_finetune``), it sets requires_grad and wraps modules, so ``parameter_groups`` and ZeRO see only the
tensors that train. It returns None, or a function of no arguments giving the method's extra training loss (a
weighted scalar tensor, e.g. Effort's orthogonality and singular-value terms) that the training step adds.

What a method wraps follows two rules, so checkpoints and export need not know the method:
  * a tensor computed from the base model's weights (Effort's principal part) is a frozen nn.Parameter, never a
    buffer: a checkpoint of a frozen-base run stores the trained parameters and the buffers only, and the rest is
    rebuilt from the base;
  * a wrapper that a plain layer can replace has ``merged()`` returning that layer (LoRA, SVD residual):
    ``merge_finetuned`` folds them for export.

Methods: ``full`` (the stage policies of ``dfdtrain.models.finetune``), ``layernorm`` (GenD), ``lora``
(``dfdtrain.models.lora``), ``svd_residual`` (Effort, ``dfdtrain.models.svd_residual``), ``adapter`` (StA: a
bottleneck after each ViT block, ``dfdtrain.models.adapters``; no ``merged()``, export keeps the adapters as modules).
"""

import types

from torch import nn

from dfdtrain.core.registry import Registry
from dfdtrain.models.adapters import adapter_finetune
from dfdtrain.models.finetune import (FinetuneSchedule, apply_phase, mark_batchnorm_frozen, parameter_groups,
                                      prepare_trainable, set_trainable_stages, train_head_only)
from dfdtrain.models.lora import lora_finetune
from dfdtrain.models.svd_residual import svd_residual_finetune

FINETUNE_METHODS = Registry("fine-tuning method")


def apply_finetune(detector, config):
    """Apply ``config.method`` (a FinetuneConfig's) to ``detector``: requires_grad and wrapped modules, before the
    optimizer is built (the Trainer and ``dfdtrain model`` both call this). Returns the method's regularizer (a
    function of no arguments giving its weighted extra loss) or None."""
    return FINETUNE_METHODS.get(config.method)(detector, config)


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
    train_head_only(detector)
    for layer in detector.backbone.modules():
        if isinstance(layer, nn.LayerNorm):
            for parameter in layer.parameters(recurse=False):
                parameter.requires_grad_(True)
    if config.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)


FINETUNE_METHODS.register("lora")(lora_finetune)
FINETUNE_METHODS.register("svd_residual")(svd_residual_finetune)
FINETUNE_METHODS.register("adapter")(adapter_finetune)


def merge_finetuned(module):
    """Replace every wrapper under ``module`` that has ``merged()`` (LoRA, SVD residual) by the plain layer it
    returns (in place), so the model exports as plain layers; returns ``module``."""
    for child in list(module.modules()):
        for child_name, layer in list(child.named_children()):
            if hasattr(layer, "merged"):
                setattr(child, child_name, layer.merged())
    return module


def finetune_method(config):
    """What a FinetuneConfig does, in words for ``dfdtrain model``: full, frozen backbone, two-phase, layernorm
    (GenD), lora (rank, alpha, targets), svd_residual (rank, targets, loss weights) or adapter (bottleneck,
    temporal)."""
    if config.method == "layernorm":
        return "layernorm (GenD: LayerNorm affine parameters + head)"
    if config.method == "adapter":
        width = config.adapter_dim or "half the width"
        return f"adapter (StA: bottleneck {width} after each block{', temporal' if config.adapter_temporal else ''})"
    if config.method == "lora":
        return f"lora (rank {config.lora_rank}, alpha {config.lora_alpha:g}, {', '.join(config.lora_targets)})"
    if config.method == "svd_residual":
        return (f"svd_residual (Effort: rank {config.svd_residual_rank}, {', '.join(config.svd_targets)}; loss "
                f"{config.svd_orthogonal_weight:g} orthogonality + {config.svd_singular_weight:g} keep-SV)")
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
