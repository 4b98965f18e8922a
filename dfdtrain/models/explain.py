"""Where the evidence is: a heatmap per sampled frame of what drove a detector's fake score.

    explanation = explain(model, frames, mask)   # frames [B,T,C,S,S] (the model's input), mask [B,T]
    explanation.video_logits, explanation.frame_logits   # exactly the model's own outputs for this input
    explanation.maps                                     # [B,T,S,S] in [0, 1], at the crop's size; 0 at padding

The method is Grad-CAM (R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM:
Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017): the activations A of a late
feature layer, each channel k weighted by the mean over positions of d(video logit)/dA_k, summed over channels
and passed through a ReLU (only evidence *for* FAKE), upsampled bilinearly to the crop and scaled to a maximum of
1 per frame (a frame with no positive evidence is all 0). The explained score is the video logit: with a
temporal head, a frame's map shows what in that frame pushed the video towards FAKE.

Explainers, one per backbone kind (``EXPLAINERS``; adding one is one entry):
  cnn     timm CNNs (and channels-last ones such as Swin): the last feature stage, timm's ``feature_info[-1]``
          (``layer4``, ``blocks.5``, ``stages.3``, ...), or the stage before it (stride 16) when the last one has
          fewer than MIN_CELLS cells a side at the input size: on a 128-px input a stride-32 stage is 4 x 4, too
          coarse to say where. Measured on a detector trained by `dfdtrain demo` (mobilenetv3_small_100 + GRU,
          128 px; the smaller run of tests/support.py SMALL_DEMO) over 6 held-out synthetic fakes: the last stage's map was empty (no positive evidence) on 21 of 24 frames
          and its mean inside the blended region 1.38x its mean outside; the stride-16 stage's 8 x 8 map had
          no empty frame and 1.60x
  vit     timm ViTs: Grad-CAM on the patch tokens entering the last block's attention (``blocks[-1].norm1``,
          as pytorch-grad-cam does for ViTs: after it only the class token may be read), the prefix tokens
          left out and the rest reshaped to the patch grid
  clip3d  torchvision video models: the last 3D stage (``layer4``, ``features``); Grad-CAM over its temporal
          cells, and each frame gets the map of its cell (its segment's, as ``ClipDetector`` gives each frame its
          segment's score)
  tall    TALL: the image model's map over the thumbnail, cut back into its tiles: one map per frame
A model without an explainer (``mvit_v2_s``: its head reads only the class token, so the patch tokens after its
last block get no gradient; not done yet) raises ``NotExplainable``, one line saying why, which callers turn into
a note.

One forward and one backward for the whole batch, "batched with the scoring pass": the forward is the model's
own (a forward hook reads the layer), so the logits are the ones scoring computes. The gradient is taken with
``torch.autograd.grad`` with respect to that layer's output only: nothing accumulates in the parameters' .grad,
and the hook is removed and the train/eval mode restored on every path. Eval mode and no randomness: the same
input gives the same maps. Every dfdtrain model has its full weights in PyTorch (training checkpoints and
safetensors bundles; ONNX/TorchScript exports are not what ``predict`` loads), so every one can be differentiated.
"""

import base64
import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dfdtrain.core.errors import DfdError
from dfdtrain.models.clip_backbones import ThumbnailBackbone, TorchvisionClipBackbone
from dfdtrain.models.detector import ClipDetector, VideoDetector
from dfdtrain.core.registry import Registry

METHOD = "Grad-CAM"
MIN_CELLS = 7  # a CNN stage's map must be at least this many cells a side (a 224-px input at stride 32: 7)
EXPLAINERS = Registry("explainer")


class NotExplainable(DfdError):
    """This model (or this run of it) gives no maps; the message says why, in one line."""


@dataclasses.dataclass
class Explanation:
    video_logits: torch.Tensor  # [B], as model(frames, mask) gives them
    frame_logits: torch.Tensor  # [B,T]
    maps: torch.Tensor  # [B,T,S,S] float in [0, 1] (S: the input's size), 0 at padded frames
    kind: str  # the explainer: cnn, vit, clip3d, tall
    layer: str  # the explained layer, by its name in the model


@dataclasses.dataclass(frozen=True)
class Target:
    """What an explainer explains in one model: the layer and how its output becomes per-frame maps."""

    kind: str
    layer: str
    module: nn.Module
    # (activation, gradient, mask [B,T], size S) -> unnormalised maps [B,T,S,S]
    to_maps: object


def grad_cam(activation, gradient):
    """Grad-CAM of channel-first activations and their gradients [N,C,*cells] -> [N,*cells] (>= 0)."""
    cells = tuple(range(2, activation.dim()))
    weights = gradient.mean(dim=cells, keepdim=True)  # alpha_k: the channel's mean gradient
    return torch.relu((weights * activation).sum(dim=1))


def _resize(cams, size):
    """[N,h,w] -> [N,size,size], bilinear."""
    return F.interpolate(cams.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


# ---------------------------------------------------------------------------------------------- image models
def image_model_layer(image_model, size):
    """(kind, layer name, module, to_nchw) for a timm image model on ``size``-px images (tiles): its explained
    layer and how that layer's output becomes [N,C,h,w]; NotExplainable when it has neither a ViT's blocks nor
    timm's feature_info."""
    blocks, patch_embed = getattr(image_model, "blocks", None), getattr(image_model, "patch_embed", None)
    if (isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1") and patch_embed is not None
            and hasattr(image_model, "num_prefix_tokens")):
        prefix = image_model.num_prefix_tokens

        def tokens_to_nchw(tokens):
            patches = tokens[:, prefix:]
            grid = tuple(getattr(patch_embed, "grid_size", None) or ())
            if len(grid) != 2 or grid[0] * grid[1] != patches.shape[1]:
                side = round(patches.shape[1] ** 0.5)
                if side * side != patches.shape[1]:
                    raise NotExplainable(f"{patches.shape[1]} patch tokens do not form a square grid")
                grid = (side, side)
            return rearrange(patches, "n (h w) c -> n c h w", h=grid[0], w=grid[1])

        return "vit", f"blocks.{len(blocks) - 1}.norm1", blocks[-1].norm1, tokens_to_nchw
    feature_info = getattr(image_model, "feature_info", None)
    if isinstance(feature_info, (list, tuple)) and feature_info and "module" in feature_info[-1]:
        stage = feature_info[-1]
        if len(feature_info) > 1 and size / stage.get("reduction", 32) < MIN_CELLS:
            stage = feature_info[-2]
        name = stage["module"]
        try:
            module = image_model.get_submodule(name)
        except AttributeError:
            try:
                name = name.replace("_", ".")
                module = image_model.get_submodule(name)
            except AttributeError:
                raise NotExplainable(f"{type(image_model).__name__}: its last feature stage {name!r} is not a "
                                     "module") from None
        channels_last = getattr(image_model, "output_fmt", "NCHW") == "NHWC"  # e.g. timm's Swin

        def to_nchw(features):
            if features.dim() != 4:
                raise NotExplainable(f"{type(image_model).__name__}.{name} gives {features.dim()}-d features, "
                                     "not a feature map")
            return features.permute(0, 3, 1, 2) if channels_last else features

        return "cnn", name, module, to_nchw
    raise NotExplainable(f"no explainer for {type(image_model).__name__}: neither a timm ViT (blocks + "
                         "patch_embed) nor a model with timm's feature_info")


@EXPLAINERS.register("image")
def frame_backbone_target(model, size):
    """A VideoDetector: the backbone's layer over each real frame (only those go through the backbone)."""
    kind, name, module, to_nchw = image_model_layer(model.backbone, size)

    def to_maps(activation, gradient, mask, size):
        cams = _resize(grad_cam(to_nchw(activation), to_nchw(gradient)), size)  # [real frames, S, S]
        maps = cams.new_zeros((mask.numel(), size, size))
        maps[mask.reshape(-1)] = cams  # the backbone ran on the real frames, in (b t) order
        return maps.view(*mask.shape, size, size)

    return Target(kind, f"backbone.{name}", module, to_maps)


@EXPLAINERS.register("tall")
def thumbnail_target(model, size):
    """TALL: the image model's map over the g x g thumbnail, cut into its tiles (frame t: row t // g, column t % g)."""
    backbone = model.backbone
    kind, name, module, to_nchw = image_model_layer(backbone.image_model, size)

    def to_maps(activation, gradient, mask, size):
        grid = backbone.grid
        cams = _resize(grad_cam(to_nchw(activation), to_nchw(gradient)), grid * size)
        tiles = rearrange(cams, "b (gh h) (gw w) -> b (gh gw) h w", gh=grid, gw=grid)[:, :mask.shape[1]]
        return tiles * mask[:, :, None, None]

    return Target("tall", f"backbone.image_model.{name}", module, to_maps)


# ---------------------------------------------------------------------------------------------- clip models
# torchvision video models: the last 3D stage and its layout ("ncthw", or "nthwc" for Swin3D's channels-last)
CLIP_LAYERS = {"r3d_18": ("layer4", "ncthw"), "mc3_18": ("layer4", "ncthw"), "r2plus1d_18": ("layer4", "ncthw"),
               "s3d": ("features", "ncthw"), "swin3d_t": ("features", "nthwc")}


@EXPLAINERS.register("clip3d")
def clip_backbone_target(model, size):
    """A torchvision video model: Grad-CAM over the last 3D stage's cells [T',h,w]; frame t gets cell t*T'//T."""
    name = model.backbone_info.name
    if name not in CLIP_LAYERS:
        raise NotExplainable(f"no explainer for the clip backbone {name} (explained: {', '.join(CLIP_LAYERS)})")
    layer, layout = CLIP_LAYERS[name]

    def to_ncthw(features):
        return features.permute(0, 4, 1, 2, 3) if layout == "nthwc" else features

    def to_maps(activation, gradient, mask, size):
        cams = grad_cam(to_ncthw(activation), to_ncthw(gradient))  # [B,T',h,w]
        batch, cells = cams.shape[:2]
        time = mask.shape[1]
        cell_of_frame = torch.arange(time, device=cams.device) * cells // time  # as ClipDetector's segments
        maps = _resize(cams.flatten(0, 1), size).view(batch, cells, size, size)[:, cell_of_frame]
        return maps * mask[:, :, None, None]

    return Target("clip3d", f"backbone.model.{layer}", model.backbone.model.get_submodule(layer), to_maps)


def find_target(model, size=224):
    """The Target that explains ``model`` on frames of ``size`` px; NotExplainable (one line) when none does."""
    if isinstance(model, VideoDetector):
        return EXPLAINERS.get("image")(model, size)
    if isinstance(model, ClipDetector) and isinstance(model.backbone, ThumbnailBackbone):
        return EXPLAINERS.get("tall")(model, size)
    if isinstance(model, ClipDetector) and isinstance(model.backbone, TorchvisionClipBackbone):
        return EXPLAINERS.get("clip3d")(model, size)
    raise NotExplainable(f"no explainer for {type(model).__name__}")


def explain_note(model):
    """None when ``model`` can be explained, else why not (one line)."""
    try:
        find_target(model)
    except NotExplainable as reason:
        return str(reason)
    return None


def normalise(maps):
    """Each frame's map scaled to a maximum of 1 (an all-0 map stays 0); non-finite values become 0."""
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    peak = maps.flatten(-2).amax(dim=-1)[..., None, None]
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def explain(model, frames, mask=None):
    """The model's logits for ``frames`` [B,T,C,S,S] (its normalised input) with ``mask`` [B,T], and a Grad-CAM
    map [B,T,S,S] per frame of what drove the video logit (see the module docstring). NotExplainable when the
    model has no explainer or its layer gets no gradient (e.g. gradient checkpointing that recomputes it)."""
    target = find_target(model, frames.shape[-1])
    if mask is None:
        mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
    captured = []

    def keep_output(module, inputs, output):
        if not captured:  # the forward's call (a recomputation during backward is not it)
            captured.append(output)

    handle = target.module.register_forward_hook(keep_output)
    was_training = model.training
    model.eval()
    # cuDNN's RNN backward refuses eval mode; off for this pass on a GPU with a recurrent head
    cudnn_off = frames.device.type == "cuda" and any(isinstance(module, nn.RNNBase) for module in model.modules())
    try:
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=not cudnn_off):
            # the input asks for gradients, so the layer has one even where the weights are frozen
            video_logits, frame_logits = model(frames.detach().requires_grad_(True), mask)
            if not captured or not torch.is_tensor(captured[0]) or not captured[0].requires_grad:
                raise NotExplainable(f"{target.layer} gave no differentiable output (gradient checkpointing?)")
            (gradient,) = torch.autograd.grad(video_logits.float().sum(), captured[0])
        with torch.no_grad():
            maps = normalise(target.to_maps(captured[0].detach().float(), gradient.float(), mask, frames.shape[-1]))
    finally:
        handle.remove()
        model.train(was_training)
    return Explanation(video_logits.detach(), frame_logits.detach(), maps, target.kind, target.layer)


# ---------------------------------------------------------------------------------------------- pictures
def colour_map(values):
    """Values in [0, 1] [...] -> uint8 RGB [..., 3] on the 'jet' scale (blue, cyan, yellow, red)."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0, 1)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peak at 3/4, 1/2, 1/4
    return (np.clip(1.5 - np.abs(4 * values - centres), 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay(crop, heatmap):
    """A uint8 crop [S,S,3] with its map [S,S] (in [0, 1]) blended on: the more evidence, the more colour."""
    alpha = (0.15 + 0.5 * np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1))[..., None]
    blended = (1 - alpha) * crop.astype(np.float32) + alpha * colour_map(heatmap).astype(np.float32)
    return (blended + 0.5).clip(0, 255).astype(np.uint8)


def strip(crops, overlays, gap=2):
    """The crops side by side above their overlays: uint8 [2S+gap, n*S+(n-1)*gap, 3] on white."""
    count, size = len(crops), crops[0].shape[0]
    canvas = np.full((2 * size + gap, count * size + (count - 1) * gap, 3), 255, dtype=np.uint8)
    for position, (crop, shown) in enumerate(zip(crops, overlays)):
        left = position * (size + gap)
        canvas[:size, left:left + size] = crop
        canvas[size + gap:, left:left + size] = shown
    return canvas


def png_bytes(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(image):
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def safe_key(path, taken):
    """A file-name-safe key for a video (its name without the extension), unique among ``taken`` (added to it)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(path)).stem).strip("_.-")[:80] or "video"
    unique, number = key, 2
    while unique in taken:
        unique, number = f"{key}-{number}", number + 1
    taken.add(unique)
    return unique


def write_overlays(folder, key, crops, maps, indices):
    """``folder``/KEY-NNN.png per frame (NNN: its frame number in the video, at least 3 digits) and
    ``folder``/KEY-strip.png; returns {"files": [paths], "strip": path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shown = [overlay(crop, heatmap) for crop, heatmap in zip(crops, maps)]
    files = []
    for index, image in zip(indices, shown):
        path = folder / f"{key}-{int(index):03d}.png"
        path.write_bytes(png_bytes(image))
        files.append(str(path))
    strip_path = folder / f"{key}-strip.png"
    strip_path.write_bytes(png_bytes(strip(list(crops), shown)))
    return {"files": files, "strip": str(strip_path)}
