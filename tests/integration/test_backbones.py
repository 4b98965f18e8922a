"""Backbones: real timm models (pretrained=False), Keras aliases, name errors, pretrained weights and stages.

Each alias's model is built once per module (the big ones, B7, VGG19, InceptionResNetV2, DenseNet201 and
ResNet152V2, dominate the runtime) and fed tiny inputs: 32 px, or 75 px for the Inception stems.
"""

import time

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch

from dfdtrain.core.errors import DfdError
from dfdtrain.models.backbones import (ALIAS_NOTES, KERAS_ALIASES, backbone_stages, build_backbone,
                                       resolve_backbone_name)

# the smallest input each model accepts: Inception stems reduce 75 px to 1x1 (32 px fails), the rest take 32
FORWARD_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75}

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def built():
    """build_backbone(alias), once per alias for the whole module."""
    models = {}

    def get(alias):
        if alias not in models:
            torch.manual_seed(0)
            models[alias] = build_backbone(alias)
        return models[alias]

    return get


@pytest.mark.parametrize("alias", list(KERAS_ALIASES))
def test_every_alias_builds_and_gives_pooled_features(built, alias):
    module, info = built(alias)
    assert info.name == alias and info.model_name == KERAS_ALIASES[alias]
    assert info.pretrained == "none" and info.note == ALIAS_NOTES.get(alias)
    assert set(info.data_config) >= {"input_size", "mean", "std", "interpolation", "crop_pct"}
    size = FORWARD_SIZE.get(alias, 32)
    module.eval()
    with torch.no_grad():
        features = module(torch.randn(2, 3, size, size))
    assert features.shape == (2, info.num_features) and torch.isfinite(features).all()


@pytest.mark.parametrize("alias", list(KERAS_ALIASES))
def test_every_alias_stages_cover_every_parameter_exactly_once(built, alias):
    module, _ = built(alias)
    stages = backbone_stages(module)
    names = [name for stage in stages for name in stage]
    assert len(stages) >= 2 and all(stages)
    assert sorted(names) == sorted(name for name, _ in module.named_parameters())
    assert len(names) == len(set(names))


@pytest.mark.parametrize("spelling", ["EfficientNetB7", "efficientnet-b7", "efficientnetb7", "EFFICIENTNET_B7",
                                      "Efficient-Net-B7"])
def test_alias_spellings_resolve_to_the_same_model(spelling):
    assert resolve_backbone_name(spelling) == "tf_efficientnet_b7"


def test_other_aliases_and_timm_names_resolve():
    assert resolve_backbone_name("resnet152v2") == "resnetv2_152"
    assert resolve_backbone_name("nasnet-mobile") == "mnasnet_100"
    assert resolve_backbone_name("Inception_ResNet_V2") == "inception_resnet_v2"
    assert resolve_backbone_name("mobilenet_v2") == "mobilenetv2_100"
    # timm names pass through, with or without a pretrained tag
    assert resolve_backbone_name("resnet50.a1_in1k") == "resnet50.a1_in1k"
    assert resolve_backbone_name("convnext_tiny") == "convnext_tiny"
    # an exact timm name stays that model: timm's own efficientnet_b7 is not the Keras (TF) port
    assert resolve_backbone_name("efficientnet_b7") == "efficientnet_b7"


@pytest.mark.parametrize("name, suggestion", [("EfficentNetB7", "EfficientNetB7"), ("resnet5", "resnet50"),
                                              ("mobilenetv2_10", "mobilenetv2_100")])
def test_unknown_name_is_a_one_line_error_with_close_matches(name, suggestion):
    started = time.perf_counter()
    with pytest.raises(DfdError) as error:
        build_backbone(name)
    message = str(error.value)
    assert f"unknown backbone {name!r}" in message and "did you mean" in message and "\n" not in message
    suggestions = message.split("did you mean ")[1].split("?")[0].split(", ")
    assert suggestion in suggestions
    assert time.perf_counter() - started < 1.0


def test_unknown_pretrained_tag_names_the_known_tags():
    with pytest.raises(DfdError, match=r"no pretrained tag 'bogus' for resnet50 \(known tags: .*a1_in1k"):
        resolve_backbone_name("resnet50.bogus")


def test_pretrained_true_without_the_hub_is_an_error_not_random_weights(monkeypatch, tmp_path):
    # offline mode (read by huggingface_hub at call time) and an empty cache: the download fails at once
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    started = time.perf_counter()
    with pytest.raises(DfdError) as error:
        build_backbone("MobileNetV2", pretrained=True)
    message = str(error.value)
    assert message.startswith("MobileNetV2: pretrained weights requested but the timm hub is unreachable (")
    assert "pretrained_file=PATH (a .safetensors/.pth of mobilenetv2_100) or pretrained=False" in message
    assert "\n" not in message
    assert time.perf_counter() - started < 10


def test_pretrained_true_for_a_model_timm_has_no_weights_for_suggests_alternatives():
    with pytest.raises(DfdError) as error:
        build_backbone("ResNet152V2", pretrained=True)
    message = str(error.value)
    assert "timm ships no pretrained weights for resnetv2_152" in message
    assert "resnetv2_152x2_bit" in message and "pretrained_file=PATH" in message and "\n" not in message


@pytest.mark.parametrize("suffix, with_classifier", [(".safetensors", True), (".pth", False)])
def test_pretrained_file_loads_exactly_the_saved_weights(tmp_path, suffix, with_classifier):
    # a hub-style file keeps the 1000-class classifier; a headless one (our own backbone) has none
    torch.manual_seed(1)
    source = timm.create_model("mobilenetv2_100", num_classes=1000 if with_classifier else 0)
    saved = {name: tensor.clone() for name, tensor in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(saved, str(path))
    else:
        torch.save(saved, path)

    torch.manual_seed(5)
    module, info = build_backbone("MobileNetV2", pretrained_file=path)
    after_build = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_build, torch.rand(3))  # the caller's random stream is untouched

    assert info.pretrained == f"file:{path}" and info.model_name == "mobilenetv2_100"
    loaded = module.state_dict()
    assert set(loaded) <= set(saved)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, saved[name]), name


def test_pretrained_file_whose_names_do_not_match_is_an_error_not_random_weights(tmp_path):
    # e.g. a whole detector's state dict ("backbone." prefixes): timm's non-strict load takes none of it
    weights = {f"backbone.{name}": tensor for name, tensor in timm.create_model("mobilenetv2_100").state_dict().items()}
    path = tmp_path / "detector.safetensors"
    safetensors.torch.save_file(weights, str(path))
    with pytest.raises(DfdError) as error:
        build_backbone("MobileNetV2", pretrained_file=path)
    message = str(error.value)
    assert "at their random init" in message and "is it a checkpoint of mobilenetv2_100?" in message
    assert "\n" not in message


def test_pretrained_file_of_another_model_is_an_error(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18").state_dict(), str(path))
    with pytest.raises(DfdError) as error:
        build_backbone("MobileNetV2", pretrained_file=path)
    message = str(error.value)
    assert "could not load pretrained weights from file:" in message and "size mismatch" in message
    assert "\n" not in message


def test_pretrained_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(DfdError, match="pretrained_file .*missing.pth does not exist"):
        build_backbone("resnet18", pretrained_file=tmp_path / "missing.pth")


def test_pretrained_file_that_is_not_a_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(DfdError, match=r"could not load pretrained weights from file:.*notes.pth into resnet18"):
        build_backbone("resnet18", pretrained_file=path)


def test_data_config_follows_the_model(built):
    _, inception = built("InceptionV3")
    assert inception.data_config["mean"] == (0.5, 0.5, 0.5) and inception.data_config["std"] == (0.5, 0.5, 0.5)
    assert inception.data_config["input_size"] == (3, 299, 299)
    _, efficientnet = built("EfficientNetB7")
    assert efficientnet.data_config["input_size"] == (3, 600, 600)
    assert efficientnet.data_config["mean"] == (0.485, 0.456, 0.406)
    _, resized = build_backbone("resnet18", image_size=128)
    assert resized.data_config["input_size"] == (3, 128, 128)


def test_grad_checkpointing_and_channels_last_train_like_the_plain_model():
    images = torch.randn(2, 3, 32, 32)
    gradients = {}
    for options in ({}, {"grad_checkpointing": True, "channels_last": True}):
        torch.manual_seed(0)
        module, _ = build_backbone("resnet18", **options)
        module.train()
        inputs = images.contiguous(memory_format=torch.channels_last) if options else images
        module(inputs).square().sum().backward()
        gradients[bool(options)] = {name: p.grad for name, p in module.named_parameters()}
        if options:
            assert module.grad_checkpointing
            assert module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # channels_last picks other conv kernels: equal up to float rounding, relative to each gradient's size
    for name, gradient in gradients[False].items():
        assert (gradients[True][name] - gradient).norm() <= 1e-3 * gradient.norm(), name


def test_unsupported_options_are_errors():
    with pytest.raises(DfdError, match="legacy_xception does not support gradient checkpointing"):
        build_backbone("Xception", grad_checkpointing=True)
    with pytest.raises(DfdError, match="inception_v3 does not take drop_path_rate"):
        build_backbone("InceptionV3", drop_path_rate=0.1)
    module, _ = build_backbone("EfficientNetB0", drop_path_rate=0.2)
    assert any(type(layer).__name__ == "DropPath" for layer in module.modules())


def test_stages_follow_timm_structure_from_input_to_output(built):
    resnet, _ = built("ResNet50")
    stages = backbone_stages(resnet)
    assert len(stages) == 5  # stem + layer1..layer4
    assert "conv1.weight" in stages[0]
    assert all(name.startswith("layer4.") for name in stages[-1])

    efficientnet, _ = built("EfficientNetB0")
    stages = backbone_stages(efficientnet)
    assert len(stages) == 8  # stem + the 7 block stages (conv_head joins the last)
    assert "conv_stem.weight" in stages[0]
    assert "conv_head.weight" in stages[-1] and any(name.startswith("blocks.6.") for name in stages[-1])

    mobilenet = timm.create_model("mobilenetv2_100", num_classes=0)
    stages = backbone_stages(mobilenet)
    assert "conv_stem.weight" in stages[0]
    assert "conv_head.weight" in stages[-1] and any(name.startswith("blocks.6.") for name in stages[-1])
    assert [name for stage in stages for name in stage] == [name for name, _ in mobilenet.named_parameters()]
