"""What a detector is made of: parameter counts (total, trainable, per part), forward FLOPs of one clip and the
bytes of its state on disk. ``dfdtrain model`` and benchmarks/model_stats.py print them.

FLOPs are counted by torch's FlopCounterMode on one real forward pass at batch 1 (matmuls and convolutions; a
multiply-add counts as 2 FLOPs): one frame through the backbone, times T frames, plus the head on [1,T,D]
features; a clip backbone (ClipDetector) is counted on one whole clip, and its per-frame figure is that / T.
Training costs about 3x the forward FLOPs (forward + backward).
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.models.detector import ClipDetector

CHANNELS = 3  # every input transform (rgb, ela) gives the model 3 channels


def count_parameters(model, trainable=None):
    """``{"total", "trainable", "groups": {part: {"total", "trainable"}}}`` of ``model``; parts are its top-level
    modules (a detector's backbone and head). ``trainable``: the parameters that train (default: those with
    requires_grad)."""
    if trainable is None:
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    trained = {id(parameter) for parameter in trainable}
    groups = {}
    for name, module in model.named_children():
        parameters = list(module.parameters())
        if parameters:
            groups[name] = {"total": sum(p.numel() for p in parameters),
                            "trainable": sum(p.numel() for p in parameters if id(p) in trained)}
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if id(p) in trained), "groups": groups}


def state_bytes(model, parameters=None):
    """Bytes the floating-point tensors of ``model.state_dict()`` take (numel x element size), or of the
    ``parameters`` given (e.g. the trainable ones only)."""
    tensors = list(model.state_dict().values()) if parameters is None else list(parameters)
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors if tensor.is_floating_point())


def count_flops(function):
    """FLOPs of calling ``function()`` once (no gradients)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        function()
    return counter.get_total_flops()


def forward_flops(model, size, frames):
    """(FLOPs of one frame through the backbone, FLOPs of one clip of ``frames`` frames of ``size`` px through the
    detector); a clip backbone's per-frame figure is its clip's / ``frames``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm running statistics must not move while counting
    try:
        if isinstance(model, ClipDetector):  # motion inside the backbone: only a whole clip can be counted
            clip_flops = count_flops(lambda: model(torch.zeros(1, frames, CHANNELS, size, size, device=device)))
            return clip_flops / frames, clip_flops
        frame_flops = count_flops(lambda: model.backbone(torch.zeros(1, CHANNELS, size, size, device=device)))
        features = torch.zeros(1, frames, model.num_features, device=device)
        mask = torch.ones(1, frames, dtype=torch.bool, device=device)
        head_flops = count_flops(lambda: model.head(features, mask))
        return frame_flops, frame_flops * frames + head_flops
    finally:
        model.train(was_training)


def clip_flops(model, clip):
    """``forward_flops`` for the clips a resolved ClipSpec describes; a DfdError when the model cannot take them."""
    frames, size = clip.sampler.num_frames, clip.image_size
    try:
        return forward_flops(model, size, frames)
    except (RuntimeError, AssertionError, ValueError) as error:
        raise DfdError(f"{model.backbone_info.name} cannot take the config's clip [1,{frames},{CHANNELS},{size},"
                       f"{size}] (clip.sampler.num_frames, clip.image_size): {one_line(error)}") from None
