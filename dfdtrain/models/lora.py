"""LoRA (Hu et al. 2021; github.com/microsoft/LoRA, ``loralib/layers.py``): a trainable low-rank update beside each
targeted frozen nn.Linear of the backbone (``finetune.method: lora``)."""

import math

import torch
from torch import nn

from dfdtrain.core.errors import DfdError
from dfdtrain.models.finetune import mark_batchnorm_frozen, train_head_only


class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus a trainable low-rank update: ``y = x W^T + b + (x A^T B^T) * alpha / r``.

    As ``loralib.layers.Linear`` (Hu et al. 2021, github.com/microsoft/LoRA ``loralib/layers.py``): A [r, in]
    kaiming-uniform (a=sqrt(5)), B [out, r] zeros, so the layer starts as the original one; no dropout. It keeps
    the original's ``weight`` and ``bias`` tensors (the same names, frozen) and adds ``lora_A`` and ``lora_B``.
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


def lora_finetune(detector, config):
    """LoRA (Hu et al. 2021; github.com/microsoft/LoRA, ``loralib/layers.py``): each backbone nn.Linear named in
    ``finetune.lora_targets`` (by its last name component: timm ViTs' ``qkv``, ``proj``, ``fc1``, ``fc2``) gets a
    rank-``lora_rank`` update scaled by ``lora_alpha / lora_rank``; only ``lora_A``, ``lora_B`` and the head train.
    A backbone with no such layer is refused (nothing of it would train)."""
    train_head_only(detector)
    replaced = add_lora(detector.backbone, set(config.lora_targets), config.lora_rank, config.lora_alpha)
    if not replaced:
        raise DfdError(f"finetune.lora_targets {list(config.lora_targets)} name no nn.Linear of the backbone "
                         f"{type(detector.backbone).__name__}")
    if config.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)
