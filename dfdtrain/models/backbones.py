"""Backbones: a timm model per frame, named by its timm name or by the Keras name the reference notebooks used.

One factory, in the spirit of timm's registry: a name resolves to a timm model, and building it returns the
module together with what the data pipeline needs to feed it (timm's resolved data config)::

    module, info = build_backbone("EfficientNetB7")   # module(x[N,3,H,W]) -> pooled features [N, D]
    info == BackboneInfo(name="EfficientNetB7", model_name="tf_efficientnet_b7", num_features=2560,
                         data_config={"input_size": (3, 600, 600), "mean": ..., "std": ..., ...},
                         pretrained="none", note=None)

Names: a Keras-style alias (``KERAS_ALIASES``; matched case-insensitively, ignoring ``-`` and ``_``, so
``efficientnet-b7``, ``EfficientNetB7`` and ``efficientnetb7`` are one model) or any timm model name, with or
without a pretrained tag (``resnet50.a1_in1k``). An exact timm name wins over an alias spelling: timm's own
``efficientnet_b7`` stays timm's PyTorch-trained EfficientNet, while ``efficientnet-b7`` is the Keras one.

Pretrained weights never fall back to random init: they come from the timm hub or from ``pretrained_file``,
are checked to have actually replaced the random initialisation, and any failure is a one-line DfdError.

Foundation-model ViTs (timm's ``vision_transformer`` models: CLIP ``vit_large_patch14_clip_224.openai``, DINOv2
``vit_large_patch14_dinov2.lvd142m``, ...) are image backbones like any other. Their ``pretrained_file`` may also be
in the formats timm's ViT checkpoint filter converts: OpenAI CLIP / open_clip state dicts (``visual.`` keys,
``open_clip_pytorch_model.bin``) and DINOv2's original ``dinov2_vitl14_pretrain.pth``; position embeddings are
resampled to ``image_size``. ``global_pool`` picks their features: the class token or the mean of the patch tokens.
"""

import dataclasses
import difflib
import re
import zipfile
from pathlib import Path

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import (get_pretrained_cfg, group_parameters, is_model_pretrained, list_pretrained,
                         model_entrypoint, split_model_name_tag)

from dfdtrain.core.errors import DfdError, one_line


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """What building a backbone tells the rest of the pipeline: ``build_backbone``'s (an image backbone) or
    ``dfdtrain.models.clip_backbones.build_clip_backbone``'s (a clip backbone), kept as ``model.backbone_info``.

    ``model_name`` is the model's name in the library that builds it: timm's (with its pretrained tag) for an image
    backbone and for TALL's image model, torchvision's for its video models. Files that record it keep their key
    (the embedding shards' "backbone", model_stats.json's "timm_name")."""

    name: str  # as asked for: a Keras alias, a timm name or a clip backbone name
    model_name: str
    num_features: int  # D: the pooled features of a frame, or of each segment of a clip
    data_config: dict  # timm's input_size, mean, std, interpolation, crop_pct (ClipSpec.resolve reads it)
    pretrained: str  # "timm hub", "file:<path>" or "none"
    note: str | None  # what the model differs in from what its name suggests, or None
    kind: str = "image"  # "image": one frame at a time (then a temporal head); "clip": the whole clip
    score_kind: str | None = None  # a clip backbone's per-position scores, a key of heads.SCORE_KINDS
    dropout: float = 0.0  # a clip backbone's dropout before its classifier


# The names users know from the reference Keras notebooks -> the closest timm model.
KERAS_ALIASES = {
    # tf_efficientnet_*: ports of the TF/Keras weights, with TF "same" padding (timm's efficientnet_* differ)
    "EfficientNetB0": "tf_efficientnet_b0",
    "EfficientNetB1": "tf_efficientnet_b1",
    "EfficientNetB2": "tf_efficientnet_b2",
    "EfficientNetB3": "tf_efficientnet_b3",
    "EfficientNetB4": "tf_efficientnet_b4",
    "EfficientNetB5": "tf_efficientnet_b5",
    "EfficientNetB6": "tf_efficientnet_b6",
    "EfficientNetB7": "tf_efficientnet_b7",
    "ResNet50": "resnet50",
    # pre-activation ResNet, as Keras' V2; timm ships no ImageNet weights for this depth/width
    "ResNet152V2": "resnetv2_152",
    # the original Xception with the weights ported from Keras (timm's xception41/65/71 are the aligned variants)
    "Xception": "legacy_xception",
    "InceptionV3": "inception_v3",
    "InceptionResNetV2": "inception_resnet_v2",
    "MobileNetV2": "mobilenetv2_100",
    "VGG16": "vgg16",
    "VGG19": "vgg19",
    "DenseNet121": "densenet121",
    "DenseNet201": "densenet201",
    # timm has no NASNet-A Mobile (only NASNet-A Large, `nasnetalarge`): MnasNet is the closest mobile network
    # found by architecture search
    "NASNetMobile": "mnasnet_100",
}

# What a user of the Keras name should know about its timm stand-in (shown as info.note).
ALIAS_NOTES = {
    "ResNet152V2": "resnetv2_152 is pre-activation like Keras' ResNet152V2, but timm ships no ImageNet weights "
                   "for it: pretrained needs pretrained_file, or use resnetv2_152x2_bit (BiT, 2x wider)",
    "VGG16": "timm's VGG keeps fc6/fc7 (as a 7x7 conv MLP) before pooling: features are 4096-d, where Keras' "
             "include_top=False gives 512-d",
    "VGG19": "timm's VGG keeps fc6/fc7 (as a 7x7 conv MLP) before pooling: features are 4096-d, where Keras' "
             "include_top=False gives 512-d",
    "NASNetMobile": "timm has no NASNet-A Mobile; mnasnet_100 (MnasNet-A1, also found by architecture search, "
                    "similar size) stands in for it",
}


# model.global_pool for a ViT: "" its own default (CLIP, DINOv2: the class token), "token" the class token after the
# final norm, "avg" the mean of the patch tokens after the final norm (prefix tokens left out)
GLOBAL_POOLS = ("", "token", "avg")

# The timm modules whose models are VisionTransformers, the only ones global_pool applies to (a CNN pools by avg/max
# in its own way, and timm's EVA and other ViT families place their norms differently)
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def _alias_key(name):
    """The spelling-insensitive form of a Keras alias: lower case, without '-' and '_'."""
    return re.sub(r"[-_]", "", name).lower()


_ALIAS_BY_KEY = {_alias_key(alias): alias for alias in KERAS_ALIASES}


def keras_alias(name):
    """The Keras alias that ``name`` spells (e.g. 'efficientnet-b7' -> 'EfficientNetB7'), or None.

    An exact timm model name is never read as an alias of a different model (``efficientnet_b7`` is timm's).
    """
    alias = _ALIAS_BY_KEY.get(_alias_key(name))
    if alias is None:
        return None
    if timm.is_model(name) and name != KERAS_ALIASES[alias]:
        return None
    return alias


def resolve_backbone_name(name):
    """The timm model name (with its pretrained tag, if given) for a Keras alias or a timm name."""
    if not isinstance(name, str) or not name.strip():
        raise DfdError(f"backbone name must be a non-empty string, got {name!r}")
    alias = keras_alias(name)
    if alias is not None:
        return KERAS_ALIASES[alias]
    if timm.is_model(name):
        try:
            get_pretrained_cfg(name)  # raises for an unknown pretrained tag such as 'resnet50.bogus'
        except RuntimeError:
            architecture, tag = split_model_name_tag(name)
            tags = [split_model_name_tag(known)[1] for known in list_pretrained(architecture + ".*")]
            known = ", ".join(tags) if tags else "none"
            raise DfdError(f"backbone {name!r}: timm has no pretrained tag {tag!r} for {architecture} "
                           f"(known tags: {known})") from None
        return name
    close = close_backbone_names(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise DfdError(f"unknown backbone {name!r}{hint} (known: the Keras names in KERAS_ALIASES, e.g. ResNet50, "
                   f"and every timm.list_models() name)")


def close_backbone_names(name, count=5):
    """Up to ``count`` aliases and timm model names that look like ``name``, best first (case-insensitive)."""
    candidates = {alias.lower(): alias for alias in KERAS_ALIASES}
    candidates.update({model: model for model in timm.list_models()})  # 'resnet50' over its alias 'ResNet50'
    matches = difflib.get_close_matches(name.lower(), candidates, n=count, cutoff=0.6)
    return [candidates[match] for match in matches]


def is_vit(name):
    """Whether backbone ``name`` (a timm name or alias) is one of timm's VisionTransformers (``VIT_MODULES``)."""
    return model_entrypoint(resolve_backbone_name(name)).__module__ in VIT_MODULES


def global_pool_problem(name, global_pool):
    """None, or what is wrong with pooling backbone ``name``'s features by ``global_pool`` (a GLOBAL_POOLS value)."""
    if not global_pool:
        return None
    if global_pool not in GLOBAL_POOLS:
        return f"is {global_pool!r}; it must be one of {', '.join(repr(pool) for pool in GLOBAL_POOLS)}"
    if not is_vit(name):
        return (f"is {global_pool!r}, but {name} is not a timm ViT (vision_transformer/deit: CLIP, DINOv2, ...); "
                f"leave it empty for this backbone's own pooling")
    return None


def fixed_input_size(name):
    """Whether backbone ``name`` is built for one input size (ViTs: position embeddings, sized at build time), so
    the clip's image size must be given to ``build_backbone`` rather than only fed to it."""
    pretrained_cfg = get_pretrained_cfg(resolve_backbone_name(name))
    return bool(pretrained_cfg and pretrained_cfg.fixed_input_size)


def image_size_problem(name, image_size):
    """None, or why backbone ``name`` cannot be built for ``image_size`` px (0: its own size): below timm's minimum
    input size for it."""
    timm_name = resolve_backbone_name(name)
    pretrained_cfg = get_pretrained_cfg(timm_name)
    minimum = pretrained_cfg.min_input_size if pretrained_cfg else None
    if image_size and minimum and image_size < minimum[-1]:
        return f"is {image_size}; {timm_name} needs at least {minimum[-1]} px"
    return None


def build_backbone(name, pretrained=False, pretrained_file=None, image_size=None, drop_path_rate=0.0,
                   grad_checkpointing=False, channels_last=False, global_pool=""):
    """Build the timm model for ``name`` without a classifier: ``module(x[N,3,H,W]) -> features [N, D]``.

    Returns ``(module, info)``; info (a BackboneInfo) holds name, model_name (the timm name), num_features (D),
    data_config (timm's input_size, mean, std, interpolation, crop_pct for this model; input_size follows
    ``image_size`` when given), pretrained ("timm hub", "file:<path>" or "none") and note (what the Keras name's
    stand-in differs in, or None). ``pretrained_file`` (a .safetensors/.pth state dict of the timm model; for a ViT
    also the formats in the module docstring) implies pretrained weights. ``global_pool`` (a ViT's: "token" or
    "avg"; "" the model's own) picks the pooled features.
    """
    timm_name = resolve_backbone_name(name)
    alias = keras_alias(name)
    pretrained_cfg = get_pretrained_cfg(timm_name)
    problem = global_pool_problem(name, global_pool)
    if problem:
        raise DfdError(f"{name}: global_pool {problem}")

    create_options = {"num_classes": 0}  # no classifier: the pooled features
    if drop_path_rate:
        create_options["drop_path_rate"] = drop_path_rate
    if image_size is not None:
        if not isinstance(image_size, int) or image_size <= 0:
            raise DfdError(f"{name}: image_size must be a positive integer, got {image_size!r}")
        problem = image_size_problem(name, image_size)
        if problem:
            raise DfdError(f"{name}: image_size {problem}")
        if pretrained_cfg and pretrained_cfg.fixed_input_size:
            create_options["img_size"] = image_size  # e.g. ViTs: position embeddings are sized at build time

    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise DfdError(f"{name}: pretrained_file {path} does not exist")
        _refuse_torchscript(name, timm_name, path)
        source = f"file:{path}"
        # timm reads the file (torch.load with weights_only=True, plus argparse.Namespace for its own training
        # checkpoints; safetensors for .safetensors: no code from the file runs) and applies the model's
        # checkpoint filter (a ViT's converts the OpenAI/open_clip/DINOv2 layouts and resamples pos_embed)
        model = _create_with_weights(name, timm_name, source, pretrained_cfg_overlay={"file": str(path)},
                                     **create_options)
    elif pretrained:
        if not is_model_pretrained(timm_name):
            raise DfdError(_no_hub_weights_message(name, timm_name))
        source = "timm hub"
        model = _create_with_weights(name, timm_name, source, **create_options)
    else:
        source = "none"
        model = _create(name, timm_name, pretrained=False, **create_options)

    if global_pool:
        # after building, not create_model(global_pool=...): for "avg" timm would then build the final norm as
        # fc_norm, which the CLIP/DINOv2 weights (trained with the norm before pooling) do not fill: a silently
        # un-normalised feature. reset_classifier keeps the norm where the weights put it and only changes pooling.
        try:
            model.reset_classifier(0, global_pool=global_pool)
        except AssertionError as error:  # e.g. "token" for a ViT without a class token
            raise DfdError(f"{name}: global_pool {global_pool!r} does not fit {timm_name} ({error})") from None
    if grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except (AssertionError, AttributeError, NotImplementedError):
            raise DfdError(f"{name}: {timm_name} does not support gradient checkpointing in timm; "
                           f"set grad_checkpointing=False") from None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    data_args = {"input_size": (3, image_size, image_size)} if image_size is not None else None
    info = BackboneInfo(
        name=name,
        model_name=timm_name,
        # head_hidden_size is the pooled output width where it differs from num_features (VGG's fc7: 4096)
        num_features=getattr(model, "head_hidden_size", None) or model.num_features,
        data_config=dict(resolve_model_data_config(model, args=data_args)),
        pretrained=source,
        note=ALIAS_NOTES.get(alias) or _openai_clip_note(timm_name),
    )
    return model, info


def _openai_clip_note(timm_name):
    """The note for timm's GELU CLIP ViTs with OpenAI's weights: OpenAI trained them with QuickGELU, and timm's
    ``*_clip_quickgelu_*`` twin (the same weights file) is the one that reproduces CLIP's features."""
    architecture, tag = split_model_name_tag(timm_name)
    twin = architecture.replace("_clip_", "_clip_quickgelu_")
    if tag != "openai" or "quickgelu" in architecture or twin == architecture or not timm.is_model(twin):
        return None
    return (f"{architecture} uses GELU, but OpenAI trained CLIP with QuickGELU: {twin}.openai (the same weights) "
            f"gives CLIP's own features")


def weight_files_hint(timm_name):
    """The weight files ``pretrained_file`` can be for ``timm_name``, for error messages."""
    files = f"a .safetensors/.pth state dict of {timm_name} (e.g. the timm hub's model.safetensors)"
    if model_entrypoint(timm_name).__module__ in VIT_MODULES:
        files += (", an OpenAI CLIP or open_clip state dict (visual.* keys, open_clip_pytorch_model.bin) or "
                  "DINOv2's original dinov2_vit*14_pretrain.pth")
    return files


def _refuse_torchscript(name, timm_name, path):
    """A TorchScript archive (OpenAI's own CLIP ViT-L-14.pt) holds code and a whole model, not a state dict:
    torch.load refuses it with weights_only=True, and running it is not an option for a file from elsewhere.
    One line naming the file and what to pass instead, before timm's loader says something obscure."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.namelist()
    except (zipfile.BadZipFile, OSError):  # not a zip: safetensors, a legacy pickle, ... (timm's loader judges)
        return
    if any(entry.endswith("/constants.pkl") or "/code/" in entry for entry in entries):
        raise DfdError(f"{name}: {path} is a TorchScript archive (like OpenAI's ViT-L-14.pt), which holds code, "
                       f"not weights, and is not run; pass {weight_files_hint(timm_name)}")


def _create(name, timm_name, **options):
    """timm.create_model, with an option the model does not take (drop_path_rate, img_size) as a DfdError."""
    try:
        return timm.create_model(timm_name, **options)
    except TypeError as error:
        unsupported = [option for option in ("drop_path_rate", "img_size") if option in str(error)]
        if not unsupported:
            raise
        raise DfdError(f"{name}: {timm_name} does not take {unsupported[0]} in timm") from None


def _create_with_weights(name, timm_name, source, **options):
    """Create with pretrained weights, then prove they replaced the random initialisation.

    timm loads non-strictly (the classifier is dropped), so a file of another model could load nothing and
    leave the random init without an error. The same model built from the same seed without weights shows
    which tensors the weights replaced: every randomly initialised one must differ.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
        torch.manual_seed(0)
        random_init = _create(name, timm_name, pretrained=False, **options).state_dict()
        torch.manual_seed(0)
        try:
            model = _create(name, timm_name, pretrained=True, **options)
        except DfdError:
            raise
        except OSError as error:  # no network / not in the local cache (hf_hub, torch.hub), unreadable file
            reason = one_line(error, 300) or type(error).__name__  # load_state_dict's reports span many lines
            if source == "timm hub":
                raise DfdError(f"{name}: pretrained weights requested but the timm hub is unreachable "
                               f"({reason}); pass pretrained_file=PATH (a .safetensors/.pth of "
                               f"{timm_name}) or pretrained=False") from None
            raise DfdError(f"{name}: could not read {source[5:]} ({reason})") from None
        except Exception as error:  # a corrupt file, or one of another model (shape mismatch)
            raise DfdError(f"{name}: could not load pretrained weights from {source} into {timm_name} "
                           f"({one_line(error, 300) or type(error).__name__})") from None

    loaded = model.state_dict()
    randomly_initialised = [key for key, tensor in random_init.items()
                            if tensor.is_floating_point() and tensor.numel() > 1 and tensor.std() > 0]
    not_loaded = [key for key in randomly_initialised if torch.equal(loaded[key], random_init[key])]
    if not_loaded:
        raise DfdError(f"{name}: {source} left {len(not_loaded)} of {len(randomly_initialised)} weight tensors "
                       f"of {timm_name} at their random init (e.g. {', '.join(not_loaded[:3])}); is it a "
                       f"checkpoint of {timm_name}? (pretrained_file can be {weight_files_hint(timm_name)})")
    return model


def _no_hub_weights_message(name, timm_name):
    architecture = split_model_name_tag(timm_name)[0]
    relatives = sorted({split_model_name_tag(model)[0] for model in list_pretrained(architecture + "*")})
    hint = f" (pretrained relatives: {', '.join(relatives[:5])})" if relatives else ""
    return (f"{name}: timm ships no pretrained weights for {timm_name}{hint}; pass pretrained_file=PATH "
            f"(a .safetensors/.pth of {timm_name}) or pretrained=False")


def backbone_stages(module):
    """The model's parameter names grouped into stages, input side first: stem, blocks/stages, final layers.

    From timm's own coarse grouping (``group_matcher(coarse=True)``, the one timm uses for layer-wise learning
    rate decay), so "unfreeze the last N stages" means the same blocks for every family. Every parameter is in
    exactly one stage; the last stage holds the output-side blocks (and head-side layers such as conv_head).
    """
    if hasattr(module, "parameter_stages"):  # a clip backbone (dfdtrain.models.clip_backbones) names its own
        return module.parameter_stages()
    if not hasattr(module, "group_matcher"):
        raise DfdError(f"{type(module).__name__} has no timm group_matcher: cannot split it into stages")
    groups = group_parameters(module, module.group_matcher(coarse=True))
    return [groups[index] for index in sorted(groups)]
