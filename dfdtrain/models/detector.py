"""The video detector: a timm backbone per frame + a temporal head over the frame features.

    model = build_detector("EfficientNetB7", "lstm", head_options={"hidden_size": 512})
    video_logits, frame_logits = model(frames, mask)   # frames [B,T,C,H,W], mask [B,T]

Only the real (unmasked) frames go through the backbone: padding costs no compute and never enters
BatchNorm statistics. The head sees features [B,T,D] (zeros at padded positions) and the mask.
"""

import torch
from einops import rearrange
from torch import nn

from dfdtrain.models.backbones import build_backbone
from dfdtrain.models.heads import build_head


class VideoDetector(nn.Module):
    def __init__(self, backbone, head, backbone_info):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_info = backbone_info
        self.num_features = backbone_info["num_features"]
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


def build_detector(backbone, head, pretrained=False, head_options=None, pretrained_file=None,
                   channels_last=False, grad_checkpointing=False, drop_path_rate=0.0, image_size=None):
    """A VideoDetector from registry names: ``backbone`` (timm name or Keras alias) and ``head``."""
    backbone_module, info = build_backbone(backbone, pretrained=pretrained, pretrained_file=pretrained_file,
                                           image_size=image_size, drop_path_rate=drop_path_rate,
                                           grad_checkpointing=grad_checkpointing, channels_last=channels_last)
    head_module = build_head(head, in_features=info["num_features"], **(head_options or {}))
    model = VideoDetector(backbone_module, head_module, info)
    model.channels_last = channels_last
    return model


def build_detector_from_config(model_config, image_size=None):
    """A VideoDetector from a ModelConfig (dfdtrain.config)."""
    return build_detector(model_config.backbone, model_config.head, pretrained=model_config.pretrained,
                          head_options=model_config.head_options,
                          pretrained_file=model_config.pretrained_file or None,
                          channels_last=model_config.channels_last,
                          grad_checkpointing=model_config.grad_checkpointing,
                          drop_path_rate=model_config.drop_path_rate, image_size=image_size)
