"""timm's CLIP and DINOv2 ViTs as frame backbones: by name, with weights in timm's, OpenAI/open_clip's and DINOv2's
formats (converted by timm's ViT checkpoint filter, read without running pickle code), at a clip's image size, and
pooled by the class token or the patch-token mean (model.global_pool), also after a bundle round trip.

Small relatives stand in for ViT-L/14: TinyCLIP's vit_xsmall_patch16_clip (a CLIP image tower, 8M parameters) and
DINOv2's ViT-S/14; the weights are random, saved in each format by the test."""

import pickle

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from dfdtrain.config import ClipSpec, ModelConfig, SamplerConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.models.backbones import build_backbone
from dfdtrain.models.bundle import BUNDLE_WEIGHTS, DetectorSettings, load_detector, write_settings
from dfdtrain.models.detector import build_detector_from_config

CLIP_VIT = "vit_xsmall_patch16_clip_224.tinyclip_yfcc15m"
DINO_VIT = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture(scope="module")
def clip_weights():
    return timm_weights(CLIP_VIT)


def timm_weights(name, seed=3):
    """The state dict of ``name`` at its native size with its classifier, as the timm hub stores it (random)."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    with torch.no_grad():  # LayerNorms and biases start at 1/0: make every tensor distinct from a fresh init
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    return {key: tensor.clone().contiguous() for key, tensor in model.state_dict().items()}


def openai_clip_weights(weights):
    """``weights`` (a timm CLIP ViT) renamed as OpenAI's CLIP / open_clip state dict: ``visual.`` keys, OpenAI's
    layer names and shapes, beside text-tower tensors the image backbone must ignore."""
    renames = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
               ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
    converted = {"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.randn(10, 8)}
    for key, tensor in weights.items():
        if key == "cls_token":
            key, tensor = "class_embedding", tensor[0, 0]
        elif key == "pos_embed":
            key, tensor = "positional_embedding", tensor[0]
        elif key == "head.weight":
            key, tensor = "proj", tensor.t().contiguous()
        elif key == "head.bias":
            continue  # OpenAI's projection has no bias
        elif key.startswith("norm."):
            key = key.replace("norm.", "ln_post.")
        for old, new in renames:
            key = key.replace(old, new)
        converted[f"visual.{key}"] = tensor
    return converted


@pytest.mark.parametrize("name, width", [("vit_large_patch14_clip_224.openai", 1024),
                                         ("vit_base_patch16_clip_224.openai", 768),
                                         ("vit_large_patch14_dinov2.lvd142m", 1024)])
def test_foundation_vits_build_by_name_at_a_clip_size(name, width):
    with torch.device("meta"):  # the real modules and shapes, without initialising 300M parameters
        module, info = build_backbone(name, image_size=112)
        features = module(torch.randn(1, 3, 112, 112))
    assert info.model_name == name and info.num_features == width and info.pretrained == "none"
    assert info.data_config["input_size"] == (3, 112, 112) and module.pos_embed.shape[1] == 1 + (112 // 14 if
                                                                                               "14" in name else 7) ** 2
    assert features.shape == (1, width)
    if "clip" in name:  # timm's GELU variant of OpenAI's QuickGELU model: the note says which one matches CLIP
        assert info.note.startswith(f"{name.split('.')[0]} uses GELU") and "_clip_quickgelu_" in info.note


def test_openai_clip_file_loads_the_same_model_as_timms_file(tmp_path, clip_weights):
    weights = clip_weights
    timm_file = tmp_path / "model.safetensors"
    safetensors.torch.save_file(weights, str(timm_file))
    openai_file = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(openai_clip_weights(weights), openai_file)

    from_timm, _ = build_backbone(CLIP_VIT, pretrained_file=timm_file, image_size=224)
    from_openai, info = build_backbone(CLIP_VIT, pretrained_file=openai_file, image_size=224)
    assert info.pretrained == f"file:{openai_file}"
    loaded = from_openai.state_dict()
    assert set(loaded) == set(weights) - {"head.weight", "head.bias"}  # the projection is not a feature
    for key, tensor in loaded.items():
        assert torch.equal(tensor, weights[key]), key
    frames = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(from_openai(frames), from_timm(frames))


def test_weights_of_another_size_are_resampled_to_the_clip_size(tmp_path, clip_weights):
    weights = clip_weights  # trained at 224: a 14 x 14 grid of position embeddings
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(weights, str(path))
    module, info = build_backbone(CLIP_VIT, pretrained_file=path, image_size=112)
    saved = weights["pos_embed"]
    grid = saved[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(7, 7), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([saved[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 49, -1)], dim=1)
    assert module.pos_embed.shape == (1, 50, saved.shape[-1])
    torch.testing.assert_close(module.pos_embed.detach(), expected)
    assert torch.equal(module.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    with torch.no_grad():
        assert module(torch.randn(1, 3, 112, 112)).shape == (1, info.num_features)


def test_dinov2_original_file_loads(tmp_path):
    weights = timm_weights(DINO_VIT)  # 518 px: 37 x 37 patches, as Meta's dinov2_vits14_pretrain.pth
    original = {**weights, "mask_token": torch.randn(1, weights["cls_token"].shape[-1])}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(original, path)
    module, info = build_backbone(DINO_VIT, pretrained_file=path, image_size=56)
    assert info.num_features == 384 and module.pos_embed.shape == (1, 1 + 4 * 4, 384)
    for key, tensor in module.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(tensor, weights[key]), key


def test_torchscript_archive_is_one_line_naming_the_files_that_work(tmp_path):
    path = tmp_path / "ViT-L-14.pt"  # OpenAI's own CLIP download is a TorchScript archive
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(DfdError) as error:
        build_backbone("vit_large_patch14_clip_224.openai", pretrained_file=path)
    message = str(error.value)
    assert "\n" not in message and f"{path} is a TorchScript archive" in message
    assert "open_clip_pytorch_model.bin" in message and "model.safetensors" in message


class WritesAFile:
    """A pickle that creates ``marker`` when unpickled: what a hostile weights file could run instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_weights_file_holding_code_is_refused_without_running_it(tmp_path, clip_weights):
    marker = tmp_path / "ran"
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"state_dict": clip_weights, "extra": WritesAFile(marker)}, path, pickle_protocol=2)
    pickle.loads(pickle.dumps(WritesAFile(tmp_path / "probe")))  # the payload does run when unpickled
    assert (tmp_path / "probe").exists()
    with pytest.raises(DfdError) as error:
        build_backbone(CLIP_VIT, pretrained_file=path, image_size=64)
    assert not marker.exists()
    message = str(error.value)
    assert "\n" not in message and f"could not load pretrained weights from file:{path}" in message
    assert "weights_only" in message


def test_a_file_of_unknown_keys_names_the_formats_that_work(tmp_path, clip_weights):
    path = tmp_path / "clip.safetensors"
    safetensors.torch.save_file({f"image_encoder.{key}": value for key, value in clip_weights.items()},
                                str(path))
    with pytest.raises(DfdError) as error:
        build_backbone(CLIP_VIT, pretrained_file=path, image_size=64)
    message = str(error.value)
    assert "\n" not in message and "at their random init" in message and "open_clip_pytorch_model.bin" in message


def test_global_pool_token_and_avg_are_the_class_token_and_the_patch_mean(tmp_path, clip_weights):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(clip_weights, str(path))
    frames = torch.randn(2, 3, 64, 64)
    module, _ = build_backbone(CLIP_VIT, pretrained_file=path, image_size=64, global_pool="avg")
    # the final norm keeps its pretrained weights (create_model(global_pool="avg") would move it to a fresh fc_norm)
    assert torch.equal(module.norm.weight, clip_weights["norm.weight"])
    with torch.no_grad():
        averaged = module(frames)
        tokens = module.forward_features(frames)  # [N, 1 + 16, D], after the final norm
        torch.testing.assert_close(averaged, tokens[:, 1:].mean(dim=1))
        module.reset_classifier(0, global_pool="token")  # what global_pool "token" builds (same weights)
        by_token = module(frames)
    torch.testing.assert_close(by_token, tokens[:, 0])
    assert (averaged - by_token).abs().max() > 0.1
    default, _ = build_backbone(CLIP_VIT, image_size=64)
    assert default.global_pool == "token"  # "": CLIP's own pooling, the class token


def test_a_vit_detector_trains_and_rebuilds_from_its_bundle_at_64_px(tmp_path):
    model_config = ModelConfig(backbone=CLIP_VIT, head="mean", global_pool="avg")
    clip = ClipSpec(sampler=SamplerConfig("uniform", 3), crop="center", image_size=64)
    torch.manual_seed(0)
    model = build_detector_from_config(model_config, clip)
    assert model.backbone.patch_embed.img_size == (64, 64) and model.backbone.global_pool == "avg"
    frames, mask = torch.randn(2, 3, 3, 64, 64), torch.tensor([[True, True, True], [True, True, False]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    video_logits, _ = model(frames, mask)
    F.binary_cross_entropy_with_logits(video_logits, torch.tensor([0.0, 1.0])).backward()
    optimizer.step()
    assert not torch.equal(model.backbone.blocks[0].attn.qkv.weight, before)

    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / BUNDLE_WEIGHTS).write_bytes(safetensors.torch.save(
        {key: value.contiguous() for key, value in model.state_dict().items()}))
    resolved = clip.resolve(model.backbone_info.data_config)
    write_settings(DetectorSettings(name="vit", model=model_config, clip=resolved), folder)
    rebuilt, settings = load_detector(folder)
    assert settings.model.global_pool == "avg" and settings.clip.image_size == 64
    assert rebuilt.backbone.global_pool == "avg"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(frames, mask)[0], model(frames, mask)[0])
