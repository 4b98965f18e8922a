"""Clip backbones: networks that take the whole clip and see motion inside themselves.

    module, info = build_clip_backbone("r2plus1d_18", num_frames=16)
    features = module(clip)   # clip [B,T,C,H,W] (normalised) -> segment features [B,S,D]

An image backbone (dfdtrain.models.backbones) sees one frame at a time and leaves time to a temporal head. A
clip backbone convolves or attends across frames, as the field's video detectors do. Its output keeps S
temporal cells, the *segments* (r2plus1d_18 on 16 frames keeps 2, each seeing mostly its own 8 frames; MViT and
TALL keep 1), and ``ClipDetector`` (dfdtrain.models.detector) classifies each segment with one linear layer.

Members of ``CLIP_BACKBONES`` (adding one is one entry):
  r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s, swin3d_t
      torchvision's Kinetics-400 video models without their classifier. Nothing is downloaded at run time:
      pretrained weights come from ``pretrained_file``, the .pth torchvision publishes (the error names its URL).
  tall:<timm image model>
      TALL's thumbnail layout (Xu et al., ICCV 2023): the T frames tiled row by row into a g x g grid,
      g = ceil(sqrt(T)) (frame t at row t // g, column t % g; tiles past T stay 0, the mean colour), as one
      image for any timm model (Swin, as in the paper). ``tile_mask: P`` blanks a random P x P square at the same
      place in every tile of a training clip (the paper's masking; its code uses 16 px on 112-px tiles).

``info`` is a BackboneInfo (dfdtrain.models.backbones) as an image backbone's (name, model_name, num_features,
data_config, pretrained, note) with ``kind="clip"``, ``score_kind`` ("segment" or "clip": what the per-position
scores are, heads.SCORE_KINDS) and the classifier's ``dropout``. The clips each model takes (frames, size) are
its registry entry's; ``check_clip`` enforces them.
"""

import dataclasses
import math
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.core.registry import Registry

CLIP_BACKBONES = Registry("clip backbone")

TALL_PREFIX = "tall:"
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclasses.dataclass(frozen=True)
class VideoModel:
    """A torchvision video model: how to run it without its classifier, and the clips it takes."""

    classifier: str  # the attribute holding the Kinetics classifier (replaced by Identity)
    features: object  # (model, x [B,C,T,H,W]) -> segment features [B,S,D]
    stages: object  # model -> parameter-name prefixes of each stage, input side first
    num_features: int  # D: the width of each segment's features
    input_size: int  # torchvision's crop size for its weights
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD
    min_frames: int = 1
    fixed_frames: int = 0  # 0: any number of frames from min_frames
    min_size: int = 16
    fixed_size: int = 0
    dropout: float = 0.0  # torchvision's own dropout before the classifier
    stochastic_depth: bool = False  # takes stochastic_depth_prob (drop_path_rate)
    score_kind: str = "segment"


def _spatial_mean(feature_map):
    """[B,D,T',H',W'] -> [B,T',D]: the segments, each pooled over space."""
    return feature_map.mean(dim=(3, 4)).transpose(1, 2)


def _resnet3d_features(model, x):
    x = model.stem(x)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
    return _spatial_mean(x)


def _children_with_parameters(module, prefix):
    return [[f"{prefix}.{name}"] for name, child in module.named_children() if any(True for _ in child.parameters())]


RESNET3D = dict(classifier="fc", features=_resnet3d_features, num_features=512, input_size=112,
                stages=lambda model: [["stem"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]])

for _name in ("r3d_18", "mc3_18", "r2plus1d_18"):
    CLIP_BACKBONES.register(_name)(VideoModel(**RESNET3D))

CLIP_BACKBONES.register("s3d")(VideoModel(
    classifier="classifier", features=lambda model, x: _spatial_mean(model.features(x)), num_features=1024,
    input_size=224,
    stages=lambda model: _children_with_parameters(model.features, "features"), min_frames=5, min_size=32,
    dropout=0.2))

CLIP_BACKBONES.register("swin3d_t")(VideoModel(
    classifier="head", num_features=768, input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    # features: [B,T',H',W',C] (channels last)
    features=lambda model, x: model.norm(model.features(model.pos_drop(model.patch_embed(x)))).mean(dim=(2, 3)),
    stages=lambda model: [["patch_embed"], *_children_with_parameters(model.features, "features"), ["norm"]],
    stochastic_depth=True))

# MViT's position encoding is sized for 16 x 224 x 224, and it pools to one CLS token: one segment
CLIP_BACKBONES.register("mvit_v2_s")(VideoModel(
    classifier="head", features=lambda model, x: model(x).unsqueeze(1), num_features=768, input_size=224,
    mean=(0.45,) * 3, std=(0.225,) * 3,
    stages=lambda model: [["conv_proj", "pos_encoding"], *_children_with_parameters(model.blocks, "blocks"), ["norm"]],
    fixed_frames=16, fixed_size=224, dropout=0.5, stochastic_depth=True, score_kind="clip"))


@dataclasses.dataclass(frozen=True)
class ThumbnailLayout:
    """TALL: the clip as one tiled image for a timm model (``tall:<timm name>``)."""

    score_kind: str = "clip"


TALL_ENTRY = TALL_PREFIX + "<timm model>"  # one registry entry for every tall:<name>
CLIP_BACKBONES.register(TALL_ENTRY)(ThumbnailLayout())


def is_clip_backbone(name):
    return isinstance(name, str) and _registry_name(name) in CLIP_BACKBONES


def _registry_name(name):
    return TALL_ENTRY if name.startswith(TALL_PREFIX) else name


def clip_spec(name):
    """The registry entry (VideoModel or ThumbnailLayout) of a clip backbone name."""
    return CLIP_BACKBONES.get(_registry_name(name))


def check_clip_options(name, options):
    """None, or (option, problem) for ``model.backbone_options`` of clip backbone ``name``."""
    spec = clip_spec(name)
    known = ["dropout"] + (["tile_mask"] if isinstance(spec, ThumbnailLayout) else [])
    for option, value in options.items():
        if option not in known:
            return option, f"is not an option of the clip backbone {name} (options: {', '.join(known)})"
        if option == "dropout" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                        and 0 <= value < 1):
            return option, f"must be a number in [0, 1), not {value!r}"
        if option == "tile_mask" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return option, f"must be a size in pixels (an integer >= 0; 0 = no masking), not {value!r}"
    return None


def grid_side(num_frames):
    """The side g of TALL's g x g grid for ``num_frames`` tiles."""
    return math.ceil(math.sqrt(num_frames))


def check_clip(name, num_frames, image_size=0):
    """None, or (config key, problem) when clips of ``num_frames`` frames at ``image_size`` px (0: the model's
    own) do not fit clip backbone ``name``."""
    spec = clip_spec(name)
    if isinstance(spec, ThumbnailLayout):
        return None
    if spec.fixed_frames and num_frames != spec.fixed_frames:
        return "clip.sampler.num_frames", f"is {num_frames}; {name} takes exactly {spec.fixed_frames} frames"
    if num_frames < spec.min_frames:
        return "clip.sampler.num_frames", f"is {num_frames}; {name} needs at least {spec.min_frames} frames"
    if image_size and spec.fixed_size and image_size != spec.fixed_size:
        return "clip.image_size", f"is {image_size}; {name} takes exactly {spec.fixed_size} px"
    if image_size and image_size < spec.min_size:
        return "clip.image_size", f"is {image_size}; {name} needs at least {spec.min_size} px"
    return None


class TorchvisionClipBackbone(nn.Module):
    """A torchvision video model without its classifier: clip [B,T,C,H,W] -> segment features [B,S,D]."""

    def __init__(self, model, spec):
        super().__init__()
        setattr(model, spec.classifier, nn.Identity())
        self.model = model
        self.spec = spec

    def forward(self, clip):
        return self.spec.features(self.model, clip.transpose(1, 2))  # torchvision's layout: [B,C,T,H,W]

    def parameter_stages(self):
        """Parameter names by stage, input side first (finetune's 'unfreeze the last N stages')."""
        stages = self.spec.stages(self.model)
        return _group_by_prefix(self, [[f"model.{prefix}" for prefix in stage] for stage in stages])


class ThumbnailBackbone(nn.Module):
    """TALL: clip [B,T,C,h,w] -> one g x g thumbnail [B,C,g*h,g*w] -> a timm image model -> features [B,1,D]."""

    def __init__(self, image_model, num_frames, tile_mask=0):
        super().__init__()
        self.image_model = image_model
        self.num_frames = num_frames
        self.grid = grid_side(num_frames)
        self.tile_mask = tile_mask

    def forward(self, clip):
        if clip.shape[1] != self.num_frames:
            raise ValueError(f"this TALL model tiles {self.num_frames} frames, got a clip of {clip.shape[1]}")
        thumbnail = thumbnail_layout(clip, self.grid)
        if self.training and self.tile_mask:
            thumbnail = mask_tiles(thumbnail, self.grid, self.tile_mask)
        return self.image_model(thumbnail).unsqueeze(1)

    def parameter_stages(self):
        from dfdtrain.models.backbones import backbone_stages

        return [[f"image_model.{name}" for name in stage] for stage in backbone_stages(self.image_model)]


def thumbnail_layout(clip, grid):
    """TALL's layout: clip [B,T,C,h,w] -> [B,C,grid*h,grid*w], frame t at tile row t // grid, column t % grid
    (as the paper's ``rearrange('b (th tw c) h w -> b c (th h) (tw w)')``); tiles past T are 0."""
    missing = grid * grid - clip.shape[1]
    if missing < 0:
        raise ValueError(f"{clip.shape[1]} frames do not fit a {grid} x {grid} grid")
    if missing:
        clip = torch.cat([clip, clip.new_zeros((clip.shape[0], missing, *clip.shape[2:]))], dim=1)
    return rearrange(clip, "b (gh gw) c h w -> b c (gh h) (gw w)", gh=grid, gw=grid)


def mask_tiles(thumbnail, grid, size):
    """Zero one random ``size`` x ``size`` square per sample, at the same place in every tile."""
    batch, _, height, width = thumbnail.shape
    tile_h, tile_w = height // grid, width // grid
    size = min(size, tile_h, tile_w)
    top = torch.randint(0, tile_h - size + 1, (batch, 1, 1), device=thumbnail.device)
    left = torch.randint(0, tile_w - size + 1, (batch, 1, 1), device=thumbnail.device)
    rows = torch.arange(height, device=thumbnail.device).view(1, -1, 1) % tile_h
    columns = torch.arange(width, device=thumbnail.device).view(1, 1, -1) % tile_w
    hole = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    return thumbnail.masked_fill(hole.unsqueeze(1), 0)


def _group_by_prefix(module, stages):
    """[[parameter names]] per stage from prefixes; every parameter must fall in exactly one stage."""
    names = [name for name, _ in module.named_parameters()]
    grouped = [[name for name in names if any(name == p or name.startswith(p + ".") for p in stage)]
               for stage in stages]
    if sum(len(stage) for stage in grouped) != len(names):
        raise AssertionError(f"{type(module).__name__}: stages do not cover each parameter once")
    return grouped


def build_clip_backbone(name, num_frames=None, image_size=None, pretrained=False, pretrained_file=None,
                        drop_path_rate=0.0, grad_checkpointing=False, channels_last=False, options=None):
    """``(module, info)`` for clip backbone ``name`` (see the module docstring); ``num_frames`` sizes TALL's grid
    (default 4, the paper's 2 x 2), ``image_size`` the frames (0/None: the model's own)."""
    options = dict(options or {})
    problem = check_clip_options(name, options)
    if problem:
        raise DfdError(f"{name}: backbone option {problem[0]!r} {problem[1]}")
    spec = clip_spec(name)
    if isinstance(spec, ThumbnailLayout):
        return _build_tall(name, num_frames or 4, image_size, pretrained, pretrained_file, drop_path_rate,
                           grad_checkpointing, channels_last, options)
    if grad_checkpointing:
        raise DfdError(f"{name}: torchvision's video models do not support gradient checkpointing; "
                       "set model.grad_checkpointing=false")
    if drop_path_rate and not spec.stochastic_depth:
        raise DfdError(f"{name}: has no stochastic depth; set model.drop_path_rate=0")
    problem = check_clip(name, num_frames or spec.fixed_frames or 16, image_size or 0)
    if problem:
        raise DfdError(f"{name}: {problem[0]} {problem[1]}")
    from torchvision.models import get_model, get_model_weights

    from dfdtrain.models.backbones import BackboneInfo  # here: backbones imports timm, which checks do not need

    create_options = {"weights": None}
    if drop_path_rate:
        create_options["stochastic_depth_prob"] = drop_path_rate
    model = get_model(name, **create_options)
    weights = get_model_weights(name).DEFAULT
    source = "none"
    if pretrained_file:
        source = f"file:{pretrained_file}"
        _load_torchvision_weights(name, model, spec, pretrained_file, weights.url)
    elif pretrained:
        raise DfdError(f"{name}: torchvision's Kinetics-400 weights are not downloaded at run time; download "
                       f"{weights.url} and set model.pretrained_file=PATH (or model.pretrained=false)")
    module = TorchvisionClipBackbone(model, spec)
    if channels_last:
        module = module.to(memory_format=torch.channels_last_3d)
    size = image_size or spec.input_size
    info = BackboneInfo(name=name, kind="clip", model_name=name, num_features=spec.num_features,
                        data_config={"input_size": (3, size, size), "mean": spec.mean, "std": spec.std,
                                     "interpolation": "bilinear", "crop_pct": 1.0},
                        pretrained=source, note=f"torchvision {name} (Kinetics-400 weights: {weights.url})",
                        score_kind=spec.score_kind, dropout=options.get("dropout", spec.dropout))
    return module, info


def _load_torchvision_weights(name, model, spec, path, url):
    """Load torchvision's checkpoint at ``path`` into ``model`` (its classifier dropped); every other tensor must
    be there and fit: a file of another model is a one-line error, never a silent random init."""
    from dfdtrain.core.fileio import load_plain

    path = Path(path)
    if not path.is_file():
        raise DfdError(f"{name}: pretrained_file {path} does not exist (torchvision's weights: {url})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_plain(path)
    except Exception as error:  # unreadable, truncated, or a pickle that would run code
        raise DfdError(f"{name}: could not read {path} "
                       f"({one_line(error, 300) or type(error).__name__})") from None
    if not isinstance(state, dict):
        raise DfdError(f"{name}: {path} is not a state dict")
    state = {key: value for key, value in state.items() if not key.startswith(spec.classifier + ".")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch: another model's weights
        raise DfdError(f"{name}: {path} does not fit {name} "
                       f"({one_line(error, 300) or type(error).__name__})") from None
    missing = [key for key in missing if not key.startswith(spec.classifier + ".")]
    if missing or unexpected:
        raise DfdError(f"{name}: {path} does not fit {name} ({len(missing)} missing, {len(unexpected)} unexpected "
                       f"tensors, e.g. {(missing or unexpected)[0]}); expected torchvision's {url}")


def _build_tall(name, num_frames, image_size, pretrained, pretrained_file, drop_path_rate, grad_checkpointing,
                channels_last, options):
    from timm.models import get_pretrained_cfg

    from dfdtrain.models.backbones import build_backbone, resolve_backbone_name

    image_name = name[len(TALL_PREFIX):]
    grid = grid_side(num_frames)
    if not image_size:  # the image model's own input size, split into tiles
        cfg = get_pretrained_cfg(resolve_backbone_name(image_name))
        image_size = (cfg.input_size[-1] if cfg else 224) // grid
    image_model, image_info = build_backbone(image_name, pretrained=pretrained, pretrained_file=pretrained_file,
                                             image_size=grid * image_size, drop_path_rate=drop_path_rate,
                                             grad_checkpointing=grad_checkpointing, channels_last=channels_last)
    module = ThumbnailBackbone(image_model, num_frames, tile_mask=options.get("tile_mask", 0))
    data_config = {**image_info.data_config, "input_size": (3, image_size, image_size)}
    info = dataclasses.replace(image_info, name=name, kind="clip", data_config=data_config, score_kind="clip",
                               dropout=options.get("dropout", 0.0),
                               note=f"TALL thumbnail: {num_frames} frames of {image_size} px in a {grid} x {grid} "
                                    f"grid ({grid * image_size} px) for {image_info.model_name}")
    return module, info
