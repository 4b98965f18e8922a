"""The config rules that need the model registries: the ``model`` section's names and options, and the clips a clip
backbone takes. ``dfdtrain.checks.check_experiment`` runs them when an experiment is loaded, and
``dfdtrain.models.bundle`` when it reads a detector's settings or a run's config, so a backbone, head or option
that does not exist is one ``ConfigError`` line naming the key, before any model is built.
"""

import difflib

from dfdtrain.config import ConfigError
from dfdtrain.core.errors import DfdError
from dfdtrain.models.backbones import global_pool_problem, image_size_problem, resolve_backbone_name
from dfdtrain.models.clip_backbones import (CLIP_BACKBONES, TALL_PREFIX, check_clip, check_clip_options,
                                            is_clip_backbone)
from dfdtrain.models.detector import check_backbone_and_head
from dfdtrain.models.heads import HEADS, check_head_options


def check_model_config(model_config):
    """A ConfigError when ``model_config`` (a ModelConfig) names a backbone or head that does not exist, pairs them
    wrongly, or gives either options it does not take."""
    backbone = model_config.backbone
    if backbone.startswith(TALL_PREFIX) or not is_clip_backbone(backbone):
        try:
            resolve_backbone_name(backbone.removeprefix(TALL_PREFIX))  # TALL's image model
        except DfdError as error:
            clips = difflib.get_close_matches(backbone, CLIP_BACKBONES.names(), n=2)
            hint = f" (clip backbones: {', '.join(clips)}?)" if clips else ""
            raise ConfigError(model_config.key("backbone"), f"names no usable backbone: {error}{hint}") from None
    problem = check_backbone_and_head(backbone, model_config.head)
    if problem:
        raise ConfigError(model_config.key("head"), problem)
    if model_config.global_pool and is_clip_backbone(backbone):
        raise ConfigError(model_config.key("global_pool"), f"is for ViT image backbones; the clip backbone "
                          f"{backbone} pools its own features")
    problem = None if is_clip_backbone(backbone) else global_pool_problem(backbone, model_config.global_pool)
    if problem:
        raise ConfigError(model_config.key("global_pool"), problem)
    if is_clip_backbone(backbone):
        if model_config.head_options:
            raise ConfigError(model_config.key("head_options"), "is for temporal heads; a clip backbone's options "
                              "go in model.backbone_options")
        problem = check_clip_options(backbone, model_config.backbone_options)
        if problem:
            raise ConfigError(model_config.key(f"backbone_options.{problem[0]}"), problem[1])
        return
    if model_config.backbone_options:
        raise ConfigError(model_config.key("backbone_options"), f"is for clip backbones; {backbone} is an image "
                          "backbone")
    problem = HEADS.problem(model_config.head)
    if problem:
        raise ConfigError(model_config.key("head"), problem)
    problem = check_head_options(model_config.head, model_config.head_options)
    if problem:
        option, text = problem
        raise ConfigError(model_config.key(f"head_options.{option}") if option else model_config.key("head_options"),
                          text)


def check_clip_for_model(model_config, clip, source):
    """A ConfigError when a backbone cannot take the clips ``clip`` (a ClipSpec) describes (an image backbone: below
    its minimum size), or a clip backbone would be trained on ``source`` embeddings (cached per-frame features)
    instead of videos."""
    if not is_clip_backbone(model_config.backbone):
        problem = image_size_problem(model_config.backbone, clip.image_size)
        if problem:
            raise ConfigError("clip.image_size", problem)
        return
    problem = check_clip(model_config.backbone, clip.sampler.num_frames, clip.image_size)
    if problem:
        raise ConfigError(*problem)
    if source == "embeddings":
        raise ConfigError("data.source", f"is embeddings (cached per-frame features), but the clip backbone "
                          f"{model_config.backbone} sees whole clips: train it on video shards")
