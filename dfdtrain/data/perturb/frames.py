"""Frame perturbations for robustness tests: DeeperForensics-1.0's distortions at their five levels, plus ``resize``.

The official code is ``perturbation/distortions.py`` and ``perturbation/add_distortion_to_video.py`` of
EndlessSora/DeeperForensics-1.0 at 7589587e381aa51d48683d881a62c30b150e3ef8 (both last changed in 4f6ecff);
``LEVEL_PARAMETERS`` copies its ``get_distortion_parameter`` table. Each official type keeps its function and
parameters; OpenCV is reimplemented with numpy and torch (frames here are RGB, OpenCV's BGR read mapped to it):

==============  ======  ===========================================================================================
type            paper   what it does (official function)
==============  ======  ===========================================================================================
``saturation``  CS      ``color_saturation``: cv2 float YCrCb, Cb/Cr scaled by the parameter about 0.5 of
                        DeeperForensics' [16, 240] rescaling, back to RGB, truncated to uint8 (the same float32 steps)
``contrast``    CC      ``color_contrast``: pixel x parameter, truncated (numpy, exactly the official)
``block``       BW      ``block_wise``: ``max(1, min(H, W) // 256) x parameter`` grey (128) 8x8 blocks at uniform
                        positions, drawn anew for every frame as the official loop does (``max(1, ...)`` is ours:
                        the official count is 0 below 256 px, e.g. on 224 px face crops)
``noise``       GNC     ``gaussian_noise_color``: N(0, parameter) added to Y, Cb and Cr of that rescaled YCbCr / 255,
                        per pixel and frame, back to RGB, clipped and truncated
``blur``        GB      ``cv2.GaussianBlur(k, k, sigma=k/6)``: OpenCV's bit-exact 8-bit path (getGaussianKernelBitExact
                        taps quantised to 1/256 by error diffusion, integer separable sums, reflect-101 border, rounded
                        half up), computed in float32, where every product and sum is an exact integer
``jpeg``        JPEG    the official "JPEG compression" is ``cv2.resize`` down to ``(W // p, H // p)`` and back up, both
                        INTER_LINEAR (half-pixel centres, no antialias): the same with torch's bilinear in float32,
                        rounded half up (OpenCV's 11-bit fixed point may put an odd pixel one level apart). Kept as the
                        official does it, so numbers compare with papers that ran this code; it is no JPEG codec
``h264``        VC      ``video_compression`` (``ffmpeg -crf``) of the source video's bytes: see ``.video``
``resize``      (ours)  down by a factor (bilinear, antialiased) and back up (bilinear), a social-media rescale
==============  ======  ===========================================================================================

``PERTURBATIONS.get(type)`` is a ``Perturbation``: ``stage`` says where it applies, ``"frames"`` (called
``p(frames, level, rng)`` on uint8 [T,H,W,3] or one [H,W,3] frame, numpy or torch in, the same type out) or
``"video"`` (``p(data, level)`` on the source file's bytes, before decode and face cropping; registered when
``dfdtrain.data.perturb.video`` is imported, which ``dfdtrain.data.perturb`` does). Level 0 returns its input
itself, untouched. Parameters are the same for every frame of a clip; ``block`` and ``noise`` draw their random
numbers per frame (as the official per-frame loop), all from ``rng``: ``perturbation_rng(video_key, type, level)``
makes the output a function of (video, type, level).
"""

import dataclasses
import functools
import hashlib
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import Registry

OFFICIAL = "EndlessSora/DeeperForensics-1.0@7589587e381aa51d48683d881a62c30b150e3ef8"
LEVELS = (1, 2, 3, 4, 5)
TYPES = ("saturation", "contrast", "block", "noise", "blur", "jpeg", "h264", "resize")  # the order
# type -> (the parameter's meaning, its value at levels 1..5). All but resize: get_distortion_parameter.
LEVEL_PARAMETERS = {
    "saturation": ("Cb/Cr scale (CS)", (0.4, 0.3, 0.2, 0.1, 0.0)),
    "contrast": ("pixel scale (CC)", (0.85, 0.725, 0.6, 0.475, 0.35)),
    "block": ("8x8 grey blocks per 256 px of the short side (BW)", (16, 32, 48, 64, 80)),
    "noise": ("Gaussian noise variance in YCbCr/255 (GNC)", (0.001, 0.002, 0.005, 0.01, 0.05)),
    "blur": ("Gaussian kernel size, sigma = size/6 (GB)", (7, 9, 13, 17, 21)),
    "jpeg": ("down-then-up resize divisor (JPEG)", (2, 3, 4, 5, 6)),
    "h264": ("libx264 CRF of the source video (VC)", (30, 32, 35, 38, 40)),
    "resize": ("down-then-up scale factor (ours)", (0.9, 0.75, 0.5, 0.35, 0.25)),
}
BLOCK_WIDTH, BLOCK_VALUE = 8, 128


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One registered type: ``stage`` "frames" (``apply(frames, level, rng)``) or "video" (``apply(data, level)``
    on the source bytes, before decode)."""
    name: str
    stage: str
    apply: Callable
    source: str  # the official function it follows, or "ours"

    @property
    def parameter(self):
        return LEVEL_PARAMETERS[self.name][0]

    def value(self, level):
        """The parameter at ``level`` (1..5); None at level 0 (no perturbation)."""
        level = check_level(level)
        return LEVEL_PARAMETERS[self.name][1][level - 1] if level else None

    def __call__(self, *args, **kwargs):
        return self.apply(*args, **kwargs)


PERTURBATIONS = Registry("perturbation")


def register(name, stage, source):
    """Register ``fn`` as the perturbation ``name`` (a Perturbation wrapping it); returns ``fn``."""
    def add(fn):
        PERTURBATIONS.register(name)(Perturbation(name, stage, fn, source))
        return fn
    return add


def check_level(level):
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= LEVELS[-1]:
        raise DfdError(f"perturbation level {level!r} is not an integer in 0..{LEVELS[-1]}")
    return int(level)


def parse_perturbation(text):
    """``"jpeg:3"`` -> ("jpeg", 3); one-line DfdError for an unknown type or a level outside 0..5."""
    name, sep, level = str(text).strip().partition(":")
    if name not in TYPES:
        raise DfdError(f"unknown perturbation {name!r} in {text!r} (known: {', '.join(TYPES)}; write TYPE:LEVEL)")
    if not sep or not level.strip().isdigit():
        raise DfdError(f"perturbation {text!r} needs a level 0..{LEVELS[-1]} after the colon, e.g. {name}:3")
    return name, check_level(int(level))


def perturbation_rng(video_key, type, level, seed=0):
    """The Generator of one (video, type, level): a SeedSequence over ``seed`` and a SHA-256 of the three."""
    digest = hashlib.sha256(repr((str(video_key), str(type), int(level))).encode()).digest()
    entropy = [int(seed) % 2 ** 64] + [int.from_bytes(digest[i:i + 8], "little") for i in (0, 8, 16, 24)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def frame_perturbation(name, source):
    """Register a frame perturbation written on uint8 numpy [T,H,W,3] with its level's parameter:
    the wrapper checks the level, passes level 0 through, and takes and returns numpy or torch, [T,H,W,3] or [H,W,3]."""
    def decorate(fn):
        @functools.wraps(fn)
        def apply(frames, level, rng=None):
            level = check_level(level)
            if level == 0:
                return frames
            is_torch = isinstance(frames, torch.Tensor)
            array = frames.detach().cpu().numpy() if is_torch else np.asarray(frames)
            if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
                raise DfdError(f"perturbation {name}: frames must be uint8 [T,H,W,3] or [H,W,3], "
                               f"got {array.dtype} {list(array.shape)}")
            single = array.ndim == 3
            clip = array[None] if single else array
            if rng is None:
                rng = np.random.default_rng(0)
            out = fn(clip, LEVEL_PARAMETERS[name][1][level - 1], rng)
            out = out[0] if single else out
            return torch.from_numpy(out).to(frames.device) if is_torch else out
        register(name, "frames", source)(apply)
        return apply
    return decorate


def _truncate(values):
    """float -> uint8 as the official ``.astype(np.uint8)`` does in range (toward zero), clipped first."""
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


# ---------------------------------------------------------------------------------------- YCbCr (distortions.py)
# cv2.COLOR_BGR2YCR_CB / YCR_CB2BGR on float32: delta 0.5, coefficients of OpenCV's float path.
_Y = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # R, G, B
_CR, _CB = np.float32(0.713), np.float32(0.564)
_CR_R, _CR_G, _CB_G, _CB_B = (np.float32(v) for v in (1.403, -0.714, -0.344, 1.773))
_HALF = np.float32(0.5)


def rgb_to_ycbcr(clip):
    """``bgr2ycbcr`` of distortions.py on RGB uint8: (Y, Cb, Cr) float32, each rescaled as the official does
    (Y * 219 + 16) / 255 and (C * 224 + 16) / 255 on OpenCV's float YCrCb of 0..255 values."""
    rgb = clip.astype(np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = red * _Y[0] + green * _Y[1] + blue * _Y[2]
    cr = (red - luma) * _CR + _HALF
    cb = (blue - luma) * _CB + _HALF
    return ((luma * np.float32(219) + 16) / np.float32(255), (cb * np.float32(224) + 16) / np.float32(255),
            (cr * np.float32(224) + 16) / np.float32(255))


def ycbcr_to_rgb(luma, cb, cr):
    """``ycbcr2bgr`` of distortions.py, to float32 RGB [T,H,W,3] (not yet clipped or truncated)."""
    luma = (luma * np.float32(255) - 16) / np.float32(219)
    cb = (cb * np.float32(255) - 16) / np.float32(224) - _HALF
    cr = (cr * np.float32(255) - 16) / np.float32(224) - _HALF
    return np.stack([luma + cr * _CR_R, luma + cr * _CR_G + cb * _CB_G, luma + cb * _CB_B], axis=-1)


@frame_perturbation("saturation", "color_saturation")
def saturation(clip, scale, rng):
    luma, cb, cr = rgb_to_ycbcr(clip)
    scale = np.float32(scale)
    return _truncate(ycbcr_to_rgb(luma, _HALF + (cb - _HALF) * scale, _HALF + (cr - _HALF) * scale))


@frame_perturbation("contrast", "color_contrast")
def contrast(clip, scale, rng):
    return (clip.astype(np.float32) * np.float32(scale)).astype(np.uint8)


@frame_perturbation("block", "block_wise")
def block(clip, per_256, rng):
    frames, height, width, _ = clip.shape
    count = max(1, min(height, width) // 256) * per_256
    if height <= BLOCK_WIDTH or width <= BLOCK_WIDTH:
        return clip.copy()  # random.randint(0, side - 1 - 8) has no room
    # random.randint(0, side - 1 - width), inclusive, per block and frame
    tops = rng.integers(0, height - 1 - BLOCK_WIDTH, size=(frames, count), endpoint=True)
    lefts = rng.integers(0, width - 1 - BLOCK_WIDTH, size=(frames, count), endpoint=True)
    span = np.arange(BLOCK_WIDTH)
    out = clip.copy()
    out[np.arange(frames)[:, None, None, None], (tops[..., None] + span)[..., None],
        (lefts[..., None] + span)[..., None, :]] = BLOCK_VALUE
    return out


@frame_perturbation("noise", "gaussian_noise_color")
def noise(clip, variance, rng):
    # official: (bgr2ycbcr(img) / 255 + sqrt(var) * randn) * 255, i.e. noise of sd 255 sqrt(var) on the rescaled values
    sd = np.float32(255 * math.sqrt(variance))
    planes = [plane + sd * rng.standard_normal(plane.shape, dtype=np.float32) for plane in rgb_to_ycbcr(clip)]
    return _truncate(ycbcr_to_rgb(*planes))


# ---------------------------------------------------------------------------------------------- blur
@functools.lru_cache(maxsize=None)
def gaussian_taps_q8(ksize, sigma):
    """OpenCV's 8-bit Gaussian kernel (smooth.dispatch.cpp: getGaussianKernelBitExact, then
    getGaussianKernelFixedPoint_ED with 8 fraction bits): integer taps summing to 256."""
    half = ksize // 2
    scale = -0.125 / (sigma * sigma)
    values = [math.exp(float(x * x) * scale) for x in range(1 - ksize, -1, 2)]  # x = 2i - (n - 1)
    total = 2 * sum(values) + 1.0
    mul = 1.0 / total
    taps, err, acc = [0] * ksize, 0.0, 0
    for i, value in enumerate(values):
        adjusted = value * mul * 256 + err
        taps[i] = taps[ksize - 1 - i] = round(adjusted)  # cvRound: half to even
        err = adjusted - taps[i]
        acc += taps[i]
    taps[half] = 256 - 2 * acc
    return tuple(taps)


def _filter_axis(values, taps, dim):
    """A symmetric 1-D filter along ``dim`` of float32 [T,H,W,3], OpenCV's reflect-101 border (folded again where
    the kernel outgrows the axis): shifted slices, each pair of mirrored taps summed before its one multiply."""
    radius, size = len(taps) // 2, values.shape[dim]
    period = max(2 * size - 2, 1)
    index = np.abs(np.arange(-radius, size + radius)) % period
    padded = values.index_select(dim, torch.from_numpy(np.where(index >= size, period - index, index)))
    out = padded.narrow(dim, radius, size) * float(taps[radius])
    for i in range(radius):
        if taps[i]:
            out += (padded.narrow(dim, i, size) + padded.narrow(dim, 2 * radius - i, size)) * float(taps[i])
    return out


@frame_perturbation("blur", "cv2.GaussianBlur")
def blur(clip, ksize, rng):
    taps = gaussian_taps_q8(ksize, ksize / 6)
    # integers throughout: every sum is below 255 * 256 * 256 < 2 ** 24, exact in float32 in any order
    total = _filter_axis(_filter_axis(torch.from_numpy(clip).float(), taps, 2), taps, 1)
    return torch.floor_(total.add_(32768).div_(65536)).to(torch.uint8).numpy()  # ufixedpoint32: (v + 2^15) >> 16


# ---------------------------------------------------------------------------------------------- resizes
def _down_up(clip, height, width, antialias):
    """Bilinear (half-pixel centres) to height x width and back, in float32, rounded half up."""
    frames, full_height, full_width, _ = clip.shape
    images = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    small = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    small = torch.floor_(small + 0.5).clamp_(0, 255)  # a uint8 image between the two resizes, as in OpenCV
    back = F.interpolate(small, size=(full_height, full_width), mode="bilinear", align_corners=False)
    return torch.floor_(back + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@frame_perturbation("jpeg", "jpeg_compression")
def jpeg(clip, divisor, rng):
    _, height, width, _ = clip.shape
    return _down_up(clip, max(1, height // divisor), max(1, width // divisor), antialias=False)


@frame_perturbation("resize", "ours")
def resize(clip, factor, rng):
    _, height, width, _ = clip.shape
    return _down_up(clip, max(1, round(height * factor)), max(1, round(width * factor)), antialias=True)
