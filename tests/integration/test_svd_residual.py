"""finetune.method svd_residual (Effort) on a small timm ViT (vit_tiny, untrained, 32 px): exactness at init, which
tensors get gradients, the trainable counts (vit_tiny, and ViT-L/14 CLIP on the meta device against Effort's
196,704), the losses against a transcription of the official code, merged layers, the regularizer in a Trainer
step, and the model command."""

import copy

import pytest
import torch
from torch import nn

from dfdtrain.config import FinetuneConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.models.detector import build_detector
from dfdtrain.models.finetune import parameter_groups
from dfdtrain.models.finetune_methods import apply_finetune, merge_finetuned
from dfdtrain.models.svd_residual import (FusedSVDResidualLinear, SVDResidualLinear, add_svd_residual,
                                          svd_residual_losses)

VIT = "vit_tiny_patch16_224"
SIZE = 32
RESIDUAL = (".U_residual", ".S_residual", ".V_residual")


def vit(**options):
    torch.manual_seed(0)
    return build_detector(VIT, "mean", pretrained=False, image_size=SIZE, **options)


def clips(seed=1):
    return torch.randn(2, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def logits(model):
    return model(clips())[0]


def svd_layers(model):
    return [layer for layer in model.modules() if isinstance(layer, SVDResidualLinear)]


def perturb(model, seed=2):
    """Move the residual triplets off their SVD values, so both losses are clearly non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in svd_layers(model):
            for tensor in (layer.U_residual, layer.V_residual):
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
            layer.S_residual.add_(0.5)


def official_losses(layer, original_weight):
    """Transcribed from Effort's ``SVDResidualLinear.compute_orthogonal_loss``/``compute_keepsv_loss``
    (github.com/YZY-stack/Effort-AIGI-Detection, DeepfakeBench/training/detectors/effort_detector.py)."""
    UUT = torch.cat((layer.U_r, layer.U_residual), dim=1) @ torch.cat((layer.U_r, layer.U_residual), dim=1).t()
    VVT = torch.cat((layer.V_r, layer.V_residual), dim=0) @ torch.cat((layer.V_r, layer.V_residual), dim=0).t()
    UUT_identity = torch.eye(UUT.size(0), device=UUT.device)
    VVT_identity = torch.eye(VVT.size(0), device=VVT.device)
    orthogonal = 0.5 * torch.norm(UUT - UUT_identity, p='fro') + 0.5 * torch.norm(VVT - VVT_identity, p='fro')
    weight_current = layer.weight_main + layer.U_residual @ torch.diag(layer.S_residual) @ layer.V_residual
    weight_original_fnorm = torch.norm(original_weight, p='fro')
    keepsv = torch.abs(torch.norm(weight_current, p='fro') ** 2 - weight_original_fnorm ** 2)
    return orthogonal, keepsv


def test_starts_as_the_original_model_and_trains_only_the_residual_triplets():
    model = vit().eval()
    with torch.no_grad():
        before = logits(model)
    regularizer = apply_finetune(model, FinetuneConfig(method="svd_residual", svd_residual_rank=2))
    assert callable(regularizer)
    attn = model.backbone.blocks[0].attn
    assert isinstance(attn.qkv, FusedSVDResidualLinear) and len(attn.qkv.parts) == 3
    assert isinstance(attn.proj, SVDResidualLinear) and isinstance(model.backbone.blocks[0].mlp.fc1, nn.Linear)
    part = attn.qkv.parts[0]
    assert part.U_residual.shape == (192, 2) and part.S_residual.shape == (2,) and part.V_residual.shape == (2, 192)
    assert part.weight_main.shape == (192, 192) and part.U_r.shape == (192, 190) and part.V_r.shape == (190, 192)
    assert not any(isinstance(value, torch.Tensor) and name != "bias" for layer in svd_layers(model)
                   for name, value in vars(layer).items())  # the base-derived constants are floats, not tensors
    assert not [name for name, _ in model.backbone.named_buffers()]  # frozen parameters, no buffers
    with torch.no_grad():
        assert torch.allclose(logits(model), before, atol=1e-5, rtol=0)

    model.train()
    model.zero_grad(set_to_none=True)
    logits(model).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    residual = {name for name, _ in model.named_parameters() if name.endswith(RESIDUAL)}
    head = {f"head.{name}" for name, _ in model.head.named_parameters()}
    assert len(residual) == 3 * 4 * len(model.backbone.blocks)  # U, S, V of q, k, v and proj in each block
    assert trained == residual | head
    assert {name for name, p in model.named_parameters() if p.requires_grad} == residual | head
    assert {id(p) for group in parameter_groups(model, 1.0) for p in group["params"]} == \
        {id(p) for p in model.parameters() if p.requires_grad}
    backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    assert backbone == 12 * 4 * (192 * 2 + 2 + 192 * 2)  # 12 blocks x (q, k, v, proj) x (U + S + V) at rank 2


def test_vit_large_clip_trains_effort_count_of_parameters_built_on_the_meta_device():
    import timm

    with torch.device("meta"):  # shapes only: no weights are allocated, the SVDs run on meta tensors
        backbone = timm.create_model("vit_large_patch14_clip_224", pretrained=False, num_classes=0)
    replaced = add_svd_residual(backbone, {"qkv", "proj"}, 1)
    assert len(replaced) == 2 * 24 and not any("mlp" in name or "patch_embed" in name for name in replaced)
    trainable = sum(p.numel() for name, p in backbone.named_parameters() if name.endswith(RESIDUAL))
    assert trainable == 24 * 4 * (1024 + 1 + 1024) == 196704  # Effort's ViT-L/14 (r = 1024 - 1)
    assert abs(trainable - 196704) <= 0.1 * 196704


def test_losses_equal_the_official_formulas():
    model = vit()
    originals = {name: layer.weight.detach().clone() for name, layer in model.backbone.named_modules()
                 if isinstance(layer, nn.Linear)}
    apply_finetune(model, FinetuneConfig(method="svd_residual"))
    perturb(model)
    orthogonal, keepsv = [], []
    for name, layer in model.backbone.named_modules():
        if isinstance(layer, FusedSVDResidualLinear):
            pairs = zip(layer.parts, originals[name].chunk(3))
        elif isinstance(layer, SVDResidualLinear) and not name.split(".")[-2:-1] == ["parts"]:
            pairs = [(layer, originals[name])]
        else:
            continue
        for part, weight in pairs:
            ours = (part.compute_orthogonal_loss(), part.compute_keepsv_loss())
            theirs = official_losses(part, weight)
            assert theirs[0] > 0.01 and theirs[1] > 0.01
            assert torch.allclose(ours[0], theirs[0], rtol=1e-4, atol=0), (name, ours, theirs)
            assert torch.allclose(ours[1], theirs[1], rtol=1e-4, atol=0), (name, ours, theirs)
            orthogonal.append(theirs[0])
            keepsv.append(theirs[1])
    assert len(orthogonal) == 4 * 12
    expected = torch.stack(orthogonal).mean(), torch.stack(keepsv).mean()
    assert all(torch.allclose(a, b, rtol=1e-4) for a, b in zip(svd_residual_losses(model.backbone), expected))
    # the gradients are the official ones too
    layer = model.backbone.blocks[3].attn.proj
    ours = layer.compute_orthogonal_loss() + layer.compute_keepsv_loss()
    ours_grads = torch.autograd.grad(ours, [layer.U_residual, layer.S_residual, layer.V_residual])
    theirs_grads = torch.autograd.grad(sum(official_losses(layer, originals["blocks.3.attn.proj"])),
                                       [layer.U_residual, layer.S_residual, layer.V_residual])
    for a, b in zip(ours_grads, theirs_grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def test_merged_layers_and_folded_weights_give_the_trained_output():
    model = vit()
    regularizer = apply_finetune(model, FinetuneConfig(method="svd_residual", svd_residual_rank=4))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for step in range(3):
        optimizer.zero_grad()
        (logits(model).square().mean() + regularizer()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        trained = logits(model)
        assert not torch.allclose(logits(vit().eval()), trained, atol=1e-3)  # the triplets moved the output
        merged = merge_finetuned(copy.deepcopy(model))
        assert not svd_layers(merged) and type(merged.backbone.blocks[0].attn.qkv) is nn.Linear
        assert merged.backbone.blocks[0].attn.qkv.weight.shape == (576, 192)
        assert torch.allclose(logits(merged), trained, atol=1e-5, rtol=0)
        plain = vit().eval()
        plain.load_state_dict(merged.state_dict())  # the merged weights are a plain model's (export --merge)
        assert torch.allclose(logits(plain), trained, atol=1e-5, rtol=0)


def test_bad_targets_and_ranks_are_refused_in_one_line():
    with pytest.raises(DfdError, match=r"^finetune.svd_targets \['fc9'\] name no nn.Linear of the backbone"):
        apply_finetune(vit(), FinetuneConfig(method="svd_residual", svd_targets=["fc9"]))
    with pytest.raises(DfdError, match=r"^finetune.svd_residual_rank 192 leaves no frozen principal part of "
                                       r"blocks.0.attn.qkv \(192 singular values per block\): it must be below 192$"):
        apply_finetune(vit(), FinetuneConfig(method="svd_residual", svd_residual_rank=192))
    assert apply_finetune(vit(), FinetuneConfig(method="svd_residual", svd_orthogonal_weight=0,
                                                svd_singular_weight=0)) is None  # Effort's released training


def test_gradient_checkpointing_still_reaches_every_residual_triplet():
    model = vit(grad_checkpointing=True)
    apply_finetune(model, FinetuneConfig(method="svd_residual"))
    logits(model).sum().backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_a_trainer_step_adds_the_regularizer_and_moves_only_the_triplets_and_head(tmp_path):
    from dfdtrain.config import config_from_dict
    from dfdtrain.models.loss import video_bce
    from dfdtrain.testing.batches import FixedBatches
    from dfdtrain.training.trainer import Trainer

    config = config_from_dict({"run_dir": str(tmp_path / "run"), "train": {"engine": "ddp", "device": "cpu"},
                               "model": {"backbone": VIT, "head": "mean", "pretrained": False},
                               "data": {"batch_size": 2},
                               "finetune": {"method": "svd_residual", "svd_orthogonal_weight": 2.0,
                                            "svd_singular_weight": 0.5}, "optim": {"lr": 0.01}})
    trainer = Trainer(config, train_loader=FixedBatches(steps=1, rank=0, per_rank=2, global_batch=2, frames=2, size=224))
    model = trainer.model
    perturb(model)
    orthogonal, keepsv = svd_residual_losses(model.backbone)
    assert orthogonal.item() > 0.01 and keepsv.item() > 0.01
    assert torch.allclose(trainer.regularizer(), 2.0 * orthogonal + 0.5 * keepsv)
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    trainer.begin_epoch(0)
    batch = next(iter(trainer.train_loader))
    torch.manual_seed(3)  # the same dropout draws in both forwards
    with torch.no_grad():
        video_logits, _ = model(batch["frames"], batch["mask"])
        bce = video_bce(video_logits, batch["label"], 0.0, trainer.pos_weight)
    torch.manual_seed(3)
    result = trainer.train_step(batch)
    assert result.stepped
    assert torch.allclose(result.loss, bce + 2.0 * orthogonal + 0.5 * keepsv, rtol=1e-5)
    moved = {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    backbone_moved = {name for name in moved if name.startswith("backbone.")}
    assert backbone_moved and all(name.endswith(RESIDUAL) for name in backbone_moved)
    assert any(name.startswith("head.") for name in moved)


def test_the_model_command_reports_the_method_and_its_counts():
    from dfdtrain.checks import load_experiment
    from dfdtrain.commands.model import describe_model

    description = describe_model(load_experiment(None, [f"model.backbone={VIT}", "model.pretrained=false",
                                                        "model.head=mean", "finetune.method=svd_residual"]))
    assert description["finetune"]["name"] == "svd_residual"
    assert description["finetune"]["method"] == \
        "svd_residual (Effort: rank 1, qkv, proj; loss 1 orthogonality + 1 keep-SV)"
    assert description["params"]["groups"]["backbone"]["trainable"] == 12 * 4 * (192 + 1 + 192)
