"""The video detector: a timm backbone per frame + a temporal head over the frame features, or a clip
backbone that sees the whole clip (``head: none``).

    model = build_detector("EfficientNetB7", "lstm", head_options={"hidden_size": 512})
    model = build_detector("r2plus1d_18", None)          # or "none"
    video_logits, frame_logits = model(frames, mask)   # frames [B,T,C,H,W], mask [B,T]

VideoDetector: only the real (unmasked) frames go through the backbone: padding costs no compute and never
enters BatchNorm statistics. The head sees features [B,T,D] (zeros at padded positions) and the mask.

ClipDetector: the padded frames of a short clip are replaced by its real frames played again from the start
(loop padding, as video models are usually fed), so what padding held never reaches the output. Each segment
the clip backbone keeps gets a logit from one linear layer; the video logit is their mean (for a linear layer,
the classifier of the time-pooled features, as torchvision's own heads do) and each frame's logit is its
segment's (0 at padded frames, as the heads do).
"""

import torch
from einops import rearrange
from torch import nn

from dfdtrain.core.errors import DfdError
from dfdtrain.models.backbones import build_backbone, fixed_input_size
from dfdtrain.models.clip_backbones import (CLIP_BACKBONES, TALL_PREFIX, build_clip_backbone, clip_spec,
                                            is_clip_backbone)
from dfdtrain.models.heads import build_head, score_kind

NO_HEAD = "none"  # model.head with a clip backbone: it scores the clip itself


class VideoDetector(nn.Module):
    def __init__(self, backbone, head, backbone_info):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_info = backbone_info
        self.num_features = backbone_info.num_features
        self.channels_last = False

    def frame_features(self, frames, mask=None):
        """Backbone features [B,T,D] of frames [B,T,C,H,W]; padded frames (mask False) are left zero."""
        batch, time = frames.shape[:2]
        flat = rearrange(frames, "b t c h w -> (b t) c h w")
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        if mask is None or bool(mask.all()):
            return rearrange(self.backbone(flat), "(b t) d -> b t d", b=batch, t=time)
        real = rearrange(mask, "b t -> (b t)")
        real_features = self.backbone(flat[real])
        features = real_features.new_zeros((batch * time, real_features.shape[1]))
        features[real] = real_features
        return rearrange(features, "(b t) d -> b t d", b=batch, t=time)

    def forward(self, frames, mask=None):
        """frames [B,T,C,H,W] -> backbone + head; or cached features [B,T,D] (the embedding cache) -> head."""
        if mask is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        features = frames if frames.dim() == 3 else self.frame_features(frames, mask)
        return self.head(features, mask)


def loop_padded(frames, mask):
    """``frames`` [B,T,...] with each padded position t holding real frame t mod n (n real frames, a prefix)."""
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    # one check (one device sync per batch): a row without real frames fails it too, its first position is False
    if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() and not torch.equal(mask, positions < counts):
        raise ValueError("clip backbones need at least one real frame and the padding at the end: each mask row "
                         "True...True then False...False")
    source = positions % counts  # [B,T]: t for real frames, t mod n for padding
    index = source.view(*source.shape, *([1] * (frames.dim() - 2))).expand_as(frames)
    return frames.gather(1, index)


class ClipDetector(nn.Module):
    """A clip backbone + a linear classifier per segment (see the module docstring)."""

    def __init__(self, backbone, backbone_info):
        super().__init__()
        self.backbone = backbone
        self.backbone_info = backbone_info
        self.num_features = backbone_info.num_features
        self.head = nn.Sequential(nn.Dropout(backbone_info.dropout), nn.Linear(self.num_features, 1))
        self.channels_last = False

    def forward(self, frames, mask=None):
        if frames.dim() != 5:
            raise ValueError(f"{self.backbone_info.name} takes clips [B,T,C,H,W], not {list(frames.shape)} "
                             "(cached frame features are for image backbones + temporal heads)")
        if mask is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        clips = loop_padded(frames, mask)
        if self.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        segment_logits = self.head(self.backbone(clips)).squeeze(-1)  # [B,S]
        time, segments = frames.shape[1], segment_logits.shape[1]
        segment_of_frame = torch.arange(time, device=frames.device) * segments // time
        frame_logits = segment_logits[:, segment_of_frame].masked_fill(~mask, 0)
        return segment_logits.mean(dim=1), frame_logits


def detector_score_kind(model_config):
    """What a detector's per-position scores are (a key of heads.SCORE_KINDS)."""
    if is_clip_backbone(model_config.backbone):
        return clip_spec(model_config.backbone).score_kind
    return score_kind(model_config.head)


def check_backbone_and_head(backbone, head):
    """None, or the problem with pairing ``backbone`` and ``head`` (a clip backbone takes no temporal head)."""
    if is_clip_backbone(backbone) and head not in (None, NO_HEAD):
        return (f"{head!r} cannot follow the clip backbone {backbone}, which scores the whole clip itself; "
                f"use head: {NO_HEAD}")
    if not is_clip_backbone(backbone) and head in (None, NO_HEAD):
        return (f"{NO_HEAD!r} needs a clip backbone ({', '.join(CLIP_BACKBONES.names())}); the image backbone "
                f"{backbone} needs a temporal head")
    return None


def build_detector(backbone, head, pretrained=False, head_options=None, pretrained_file=None,
                   channels_last=False, grad_checkpointing=False, drop_path_rate=0.0, image_size=None,
                   num_frames=None, backbone_options=None, global_pool=""):
    """A VideoDetector from registry names: ``backbone`` (timm name or Keras alias) and ``head``; or a
    ClipDetector for a clip backbone with ``head`` None/"none" (``num_frames``, ``image_size`` and
    ``backbone_options`` shape it). ``global_pool`` picks a ViT backbone's features ("token", "avg")."""
    problem = check_backbone_and_head(backbone, head)
    if problem:
        raise DfdError(f"model.head: {problem}")
    if is_clip_backbone(backbone):
        if global_pool:
            raise DfdError(f"model.global_pool: is for ViT image backbones; the clip backbone {backbone} pools "
                           "its own features")
        if head_options:
            raise DfdError("model.head_options: a clip backbone has no temporal head; its options go in "
                           "model.backbone_options")
        module, info = build_clip_backbone(backbone, num_frames=num_frames, image_size=image_size,
                                           pretrained=pretrained, pretrained_file=pretrained_file,
                                           drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing,
                                           channels_last=channels_last, options=backbone_options)
        model = ClipDetector(module, info)
        model.channels_last = channels_last and not backbone.startswith(TALL_PREFIX)  # TALL: the image model's
        return model
    if backbone_options:
        raise DfdError(f"model.backbone_options: only clip backbones take options; {backbone} is an image "
                       "backbone")
    backbone_module, info = build_backbone(backbone, pretrained=pretrained, pretrained_file=pretrained_file,
                                           image_size=image_size, drop_path_rate=drop_path_rate,
                                           grad_checkpointing=grad_checkpointing, channels_last=channels_last,
                                           global_pool=global_pool)
    head_module = build_head(head, in_features=info.num_features, **(head_options or {}))
    model = VideoDetector(backbone_module, head_module, info)
    model.channels_last = channels_last
    return model


def build_detector_from_config(model_config, clip=None):
    """The detector of a ModelConfig (dfdtrain.config); ``clip`` (a ClipSpec) sizes a clip backbone: its
    frames (TALL's grid) and, when set, its image size. An image backbone built for one input size (a ViT: its
    position embeddings) is built at the clip's image size, when set; other image backbones take any size."""
    clip_options = {}
    if clip is not None and is_clip_backbone(model_config.backbone):
        clip_options = {"num_frames": clip.sampler.num_frames, "image_size": clip.image_size or None}
    elif clip is not None and clip.image_size and fixed_input_size(model_config.backbone):
        clip_options = {"image_size": clip.image_size}
    return build_detector(model_config.backbone, model_config.head, pretrained=model_config.pretrained,
                          head_options=model_config.head_options,
                          pretrained_file=model_config.pretrained_file or None,
                          channels_last=model_config.channels_last,
                          grad_checkpointing=model_config.grad_checkpointing,
                          drop_path_rate=model_config.drop_path_rate,
                          backbone_options=model_config.backbone_options, global_pool=model_config.global_pool,
                          **clip_options)
