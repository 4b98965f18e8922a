"""finetune.method on a small timm ViT (vit_tiny, untrained, 32 px): which tensors get gradients under full,
layernorm (GenD) and lora; LoRA's exactness at init, its merged layers, its folded state dict, and a Trainer step
that moves only A and B."""

import copy

import pytest
import torch
from torch import nn

from dfdtrain.config import FinetuneConfig
from dfdtrain.models.detector import build_detector
from dfdtrain.models.finetune import parameter_groups
from dfdtrain.models.finetune_methods import apply_finetune, merge_finetuned, trained_phases
from dfdtrain.models.lora import LoRALinear

VIT = "vit_tiny_patch16_224"
SIZE = 32


def vit():
    torch.manual_seed(0)
    return build_detector(VIT, "mean", pretrained=False, image_size=SIZE)


def clips(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, 3, SIZE, SIZE, generator=generator)


def logits(model):
    return model(clips())[0]  # the video logits (the head also gives per-frame scores)


def gradients_after_one_backward(model):
    model.zero_grad(set_to_none=True)
    logits(model).float().sum().backward()
    return {name for name, parameter in model.named_parameters() if parameter.grad is not None
            and bool(parameter.grad.abs().sum() > 0)}


def test_full_trains_every_parameter():
    model = vit()
    apply_finetune(model, FinetuneConfig())
    names = {name for name, _ in model.named_parameters()}
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert gradients_after_one_backward(model) == names
    assert not any(isinstance(layer, LoRALinear) for layer in model.modules())


def test_layernorm_trains_only_the_layernorms_and_the_head():
    model = vit()
    apply_finetune(model, FinetuneConfig(method="layernorm"))
    norms = {f"backbone.{name}.{kind}" for name, layer in model.backbone.named_modules()
             if isinstance(layer, nn.LayerNorm) for kind in ("weight", "bias")}
    head = {f"head.{name}" for name, _ in model.head.named_parameters()}
    assert len(norms) == 2 * (2 * len(model.backbone.blocks) + 1)  # norm1, norm2 per block and the final norm
    assert gradients_after_one_backward(model) == norms | head
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (name in norms | head), name
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for name, p in model.backbone.named_parameters() if f"backbone.{name}" in norms)
    assert backbone == 9600 and trainable / total < 0.02  # 100,225 of 5,578,177 with the head: 1.8%
    assert {id(p) for group in parameter_groups(model, 1.0) for p in group["params"]} == \
        {id(p) for p in model.parameters() if p.requires_grad}  # the optimizer (and ZeRO) sees only these


def test_lora_trains_only_a_and_b_and_starts_as_the_original_model():
    model = vit()
    model.eval()
    with torch.no_grad():
        before = logits(model)
    apply_finetune(model, FinetuneConfig(method="lora", lora_rank=4, lora_alpha=8.0))
    layers = [layer for layer in model.backbone.modules() if isinstance(layer, LoRALinear)]
    assert len(layers) == 4 * len(model.backbone.blocks)  # qkv, proj, fc1, fc2 of each block
    assert layers[0].lora_A.shape == (4, 192) and layers[0].lora_B.shape == (576, 4) and layers[0].scaling == 2.0
    with torch.no_grad():
        assert torch.allclose(logits(model), before, atol=1e-6, rtol=0)  # B = 0
    lora = {name for name, _ in model.named_parameters() if name.endswith((".lora_A", ".lora_B"))}
    head = {f"head.{name}" for name, _ in model.head.named_parameters()}
    assert len(lora) == 2 * len(layers)
    model.train()
    with torch.no_grad():  # B = 0 gives A no gradient on the first step; a non-zero B shows both get one
        for layer in layers:
            layer.lora_B.normal_(std=0.01)
    assert gradients_after_one_backward(model) == lora | head
    assert {name for name, p in model.named_parameters() if p.requires_grad} == lora | head
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 90625 + 12 * 4 * (768 + 384 + 960 + 960)  # head + A, B of 48 layers at rank 4


def test_merged_lora_layers_and_folded_weights_give_the_lora_output():
    model = vit()
    apply_finetune(model, FinetuneConfig(method="lora"))
    model.eval()
    with torch.no_grad():
        for layer in model.backbone.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.normal_(std=0.05)
        adapted = logits(model)
        merged = merge_finetuned(copy.deepcopy(model))
        assert not any(isinstance(layer, LoRALinear) for layer in merged.modules())
        assert type(merged.backbone.blocks[0].attn.qkv) is nn.Linear
        assert torch.allclose(logits(merged), adapted, atol=1e-5, rtol=0)
        assert not torch.allclose(logits(vit().eval()), adapted, atol=1e-3)  # B moved the output
        plain = vit().eval()  # the merged weights are a plain model's (export --merge)
        plain.load_state_dict(merged.state_dict())
        assert torch.allclose(logits(plain), adapted, atol=1e-5, rtol=0)


def test_lora_reports_its_counts_and_refuses_a_backbone_without_targets():
    model = vit()
    phases = trained_phases(model, FinetuneConfig(method="lora"))
    assert len(phases) == 1 and sum(p.numel() for p in phases[0][1]) == 90625 + 294912
    from dfdtrain.core.errors import DfdError
    with pytest.raises(DfdError, match=r"finetune.lora_targets \['nothing'\] name no nn.Linear"):
        apply_finetune(vit(), FinetuneConfig(method="lora", lora_targets=["nothing"]))


def test_a_trainer_step_with_lora_moves_a_and_b_and_not_the_base_weights(tmp_path):
    """Through the config and the Trainer (224 px: a config-built ViT takes its own size)."""
    from dfdtrain.config import config_from_dict
    from dfdtrain.testing.batches import FixedBatches
    from dfdtrain.training.trainer import Trainer

    config = config_from_dict({"run_dir": str(tmp_path / "run"), "train": {"engine": "ddp", "device": "cpu"},
                               "model": {"backbone": VIT, "head": "mean", "pretrained": False},
                               "data": {"batch_size": 4},
                               "finetune": {"method": "lora", "lora_rank": 2}, "optim": {"lr": 0.01}})
    trainer = Trainer(config, train_loader=FixedBatches(steps=2, rank=0, per_rank=4, frames=2, size=224))
    model = trainer.model
    assert {id(p) for group in trainer.engine.optimizer.param_groups for p in group["params"]} == \
        {id(p) for p in model.parameters() if p.requires_grad}
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    trainer.begin_epoch(0)
    for batch in trainer.train_loader:
        assert trainer.train_step(batch).stepped
    after = model.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    backbone_moved = {name for name in moved if name.startswith("backbone.")}
    assert backbone_moved and all(name.endswith((".lora_A", ".lora_B")) for name in backbone_moved)
    assert any(name.endswith(".lora_A") for name in moved)  # A moves once B is non-zero (the second step)
    assert any(name.startswith("head.") for name in moved)

    trainer.save_checkpoint("last")  # the trained tensors only: predict's loader rebuilds the base, adds LoRA
    from dfdtrain.models.bundle import load_detector
    loaded, _ = load_detector(tmp_path / "run")
    assert any(isinstance(layer, LoRALinear) for layer in loaded.modules())
    frames = trainer.train_loader.frames[:2]
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(frames)[0], model(frames)[0])


@pytest.mark.parametrize("method, backbone_trained, label", [
    ("layernorm", 9600, "layernorm (GenD: LayerNorm affine parameters + head)"),
    ("lora", 294912, "lora (rank 8, alpha 16, qkv, proj, fc1, fc2)")])
def test_the_model_command_reports_the_method_and_its_counts(method, backbone_trained, label):
    from dfdtrain.checks import load_experiment
    from dfdtrain.commands.model import describe_model

    description = describe_model(load_experiment(None, [f"model.backbone={VIT}", "model.pretrained=false",
                                                        "model.head=mean", f"finetune.method={method}"]))
    head = description["params"]["groups"]["head"]["trainable"]
    assert description["finetune"]["method"] == label and description["finetune"]["name"] == method
    assert description["params"]["groups"]["backbone"]["trainable"] == backbone_trained
    assert description["params"]["trainable"] == backbone_trained + head
    assert description["checkpoint_bytes"]["trainable"] == 4 * (backbone_trained + head)


@pytest.mark.parametrize("method", ["layernorm", "lora"])
def test_gradient_checkpointing_still_reaches_every_trained_tensor(method):
    """The patch embedding is frozen, so the blocks' input needs no gradient: a re-entrant checkpoint would give
    the tensors inside them none."""
    torch.manual_seed(0)
    model = build_detector(VIT, "mean", pretrained=False, image_size=SIZE, grad_checkpointing=True)
    apply_finetune(model, FinetuneConfig(method=method))
    model.zero_grad(set_to_none=True)
    logits(model).sum().backward()
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    assert trained and all(parameter.grad is not None for parameter in trained)
