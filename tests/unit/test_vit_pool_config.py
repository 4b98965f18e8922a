"""model.global_pool: a ViT backbone's features (class token or patch mean), refused for any other backbone when the
config is checked (one line naming the key), before a model is built; clip.image_size below a backbone's minimum
is refused at the same time."""

import pytest

from dfdtrain.config import ClipSpec, ConfigError, ModelConfig
from dfdtrain.config.schema import build_section
from dfdtrain.models.checks import check_clip_for_model, check_model_config


@pytest.mark.parametrize("backbone", ["vit_large_patch14_clip_224.openai", "vit_large_patch14_dinov2.lvd142m",
                                      "deit_tiny_patch16_224"])
@pytest.mark.parametrize("pool", ["", "token", "avg"])
def test_vits_take_every_pool(backbone, pool):
    check_model_config(ModelConfig(backbone=backbone, head="mean", global_pool=pool))


def test_an_unknown_pool_is_a_schema_error():
    with pytest.raises(ConfigError, match=r"'model.global_pool'.*'max'"):
        build_section(ModelConfig, {"backbone": "vit_base_patch16_clip_224.openai", "global_pool": "max"})


@pytest.mark.parametrize("backbone, says", [
    ("EfficientNetB0", "EfficientNetB0 is not a timm ViT"),
    ("eva02_base_patch14_224.mim_in22k", "is not a timm ViT"),
    ("r3d_18", "the clip backbone r3d_18 pools its own features"),
    ("tall:vit_base_patch16_clip_224.openai", "the clip backbone tall:vit_base_patch16_clip_224.openai pools"),
])
def test_global_pool_for_other_backbones_is_one_line(backbone, says):
    head = "none" if backbone in ("r3d_18",) or backbone.startswith("tall:") else "mean"
    with pytest.raises(ConfigError) as error:
        check_model_config(ModelConfig(backbone=backbone, head=head, global_pool="avg"))
    message = str(error.value)
    assert message.startswith("config key 'model.global_pool' ") and says in message and "\n" not in message


def test_clip_image_size_below_an_image_backbones_minimum_is_refused():
    model = ModelConfig(backbone="haloregnetz_b", head="mean")
    with pytest.raises(ConfigError, match=r"'clip.image_size' is 64; haloregnetz_b needs at least 224 px"):
        check_clip_for_model(model, ClipSpec(image_size=64), "videos")
    check_clip_for_model(model, ClipSpec(image_size=224), "videos")
    check_clip_for_model(ModelConfig(backbone="vit_base_patch16_clip_224.openai", head="mean"),
                         ClipSpec(image_size=64), "videos")  # a ViT is built at the clip's size
