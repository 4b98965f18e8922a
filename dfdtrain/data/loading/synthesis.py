"""Pseudo-fakes from real faces: self-blended images (``sbi``, per frame) and video-level blending (``vb``, per clip).

A real face is blended with a transformed copy of itself inside a landmark mask: the copy's colour and
frequency content are jittered, it is shifted and scaled a little, the mask is deformed and blurred, and a blend
ratio is drawn. The result is a fake whose only artefacts are the ones every face swap leaves at the blending
boundary. ``sbi`` draws everything anew for every frame (SBI is an image method); ``vb`` draws once per clip and
uses that draw for every frame (each frame's mask still follows its own landmarks), plus a small per-frame jitter
of the copy's position and scale, so the blended features drift across frames (VB's "facial feature drift").

    result = SYNTHESES.get("vb")(frames, landmarks, synthesis_rng(seed, epoch, rank, key))
    result.frames   # uint8 [T,H,W,3], the same type (numpy or torch) as ``frames``
    result.mask     # float32 [T,H,W]: the blend weight (blend ratio included); 0 = the source pixel, exactly

``frames`` uint8 [T,H,W,3] (or one frame [H,W,3]); ``landmarks`` 68 dlib points per frame, in the frames' pixels:
an array [T,68,2] (NaN for a frame without), or a list with one [68,2] (or an empty list) per frame. A frame
without landmarks (and a padded frame) is left real; ``result.missing`` counts them.

Guarantee: the output equals the input wherever ``mask`` is 0, and ``mask`` is 0 outside the landmark hull
dilated by ``result.reach`` pixels (the reach of the mask's affine and elastic warps plus the blend blur's radius).
Every whole-image transform acts on the copy only, which enters the output only through the blend.

Determinism: ``synthesis_rng(seed, epoch, rank, sample)`` is a numpy Generator from a SeedSequence over those
integers and a SHA-256 of ``sample`` (a key string, an index, or a tuple such as (key, occurrence) when a
resampling loader can draw a sample twice in an epoch). Every random number of a synthesis (the elastic noise
too) comes from it, so a resumed run remakes the same fakes, bit for bit (the image operations are OpenCV's,
run sequentially: ``blend``; another OpenCV build may round an odd pixel one level apart);
a different epoch, rank or sample makes others.

Official code followed (parameters as there):
- SBI, mapooon/SelfBlendedImages @ 9fe4efe1192cb7448fb51a2b97a54e1312188160, ``src/utils/sbi.py``
  (``self_blending``, ``get_source_transforms``, ``randaffine``), ``src/utils/blend.py`` (``dynamic_blend``,
  ``get_blend_mask``), ``src/utils/funcs.py`` (``RandomDownScale``):
  RGBShift +-20 per channel (p 0.3); HueSaturationValue +-0.3 (p 1); RandomBrightnessContrast +-0.1 (p 1); one of
  RandomDownScale (x2 or x4) or Sharpen (alpha 0.2-0.5, lightness 0.5-1.0); Affine translate x +-3 %, y +-1.5 %,
  scale 0.95-1/0.95 (copy and mask); ElasticTransform alpha 50, sigma 7 (mask only); blend mask: resize to
  192-256 px per side, Gaussian kernel 5-25 (odd) then threshold (an erosion), Gaussian kernel 5-25 with sigma
  5-45, normalise, resize back; blend ratio from [0.25, 0.5, 0.75, 1, 1, 1].
- Hull masks: ``random_get_hull`` of the Face X-ray library SBI's README installs (AlgoHunt/Face-Xray), read in
  its copy SCLBD/DeepfakeBench @ 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04, ``training/dataset/library/
  bi_online_generation.py`` and ``DeepFakeMask.py``, with the uniform choice of ``training/dataset/sbi_api.py``:
  dfl_full, extended, components or facehull.
- VB, Yan et al., CVPR 2025 (arXiv 2408.17065): YZY-stack/StA4Deepfake @ 1a00b320cb6a2ffe92f45083ae5145c3644c1474
  holds the StA detector and its training but no VB generation code, so VB here follows the paper's text: SBI's
  transforms drawn once per clip, the copy warped frame by frame. The jitter's size (``VB_JITTER``) is ours.

Deviations, all deliberate:
- 68 points, not SBI's 81: dlib's 81-point model (forehead) ships with no package. The hulls stop at the
  eyebrows (``extended`` still reaches half an eyebrow height above them), so the forehead is never blended and
  SBI's 25 % chance of dropping to 68 points is moot.
- SBI applies the colour/frequency transforms to the copy or (half the time) to the target, whole image. Here
  always to the copy: the pair of statistics meeting at the boundary is the same, and the real frame stays
  untouched outside the mask (the property above).
- SBI's post-blend augmentation (``get_transforms``: colour and JPEG on both the fake and its real twin) is the
  loader's clip augmentation's job (``data.augment``), not done here; nor are SBI's crop and flip.
- Composites are rounded, not truncated, to uint8; the Affine border replicates edge pixels instead of black
  (it only shows where the mask reaches the frame's edge); the erosion is the exact min filter the blur-then-
  threshold computes, and an empty erosion keeps the mask instead of failing the sample; the mask's elastic
  field is made at half resolution with the original's statistics (``blend.elastic_field``).
"""

import dataclasses
import hashlib

import cv2
import numpy as np
import torch

from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import Registry
from dfdtrain.data.loading import blend

SYNTHESES = Registry("synthesis method")
LANDMARK_POINTS = 68
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # dynamic_blend's blend_list
ODD_KERNELS = tuple(range(5, 26, 2))  # random.randrange(5, 26, 2)
ELASTIC_ALPHA, ELASTIC_SIGMA = 50.0, 7.0
VB_JITTER = {"translate": 0.005, "scale": 0.005}  # per-frame +- (fraction of W/H; relative scale)


@dataclasses.dataclass(frozen=True)
class BlendDraw:
    """Every random choice of one blend (one frame of ``sbi``, every frame of a ``vb`` clip)."""
    hull_type: str
    rgb_shift: tuple  # (r, g, b) levels; zeros when RGBShift (p 0.3) was not drawn
    hsv_shift: tuple  # (hue, saturation, value) LUT shifts
    brightness: float
    contrast: float
    degrade: str  # "downscale" or "sharpen"
    downscale_ratio: int
    sharpen: tuple  # (alpha, lightness)
    scale: float
    translate: tuple  # (x, y) fractions of the width and height
    elastic_seed: int  # the mask's elastic noise comes from this
    mask_size: tuple  # (h, w) the blend mask is blurred at
    kernel_1: int
    kernel_2: int
    sigma_2: int
    blend_ratio: float


def draw_blend(rng):
    """One ``BlendDraw`` from a numpy Generator, with SBI's distributions."""
    shift = tuple(int(v) for v in rng.integers(-20, 21, size=3)) if rng.random() < 0.3 else (0, 0, 0)
    return BlendDraw(
        hull_type=blend.HULL_TYPES[int(rng.integers(len(blend.HULL_TYPES)))], rgb_shift=shift,
        hsv_shift=tuple(float(v) for v in rng.uniform(-0.3, 0.3, size=3)),
        brightness=float(rng.uniform(-0.1, 0.1)), contrast=float(rng.uniform(-0.1, 0.1)),
        degrade="downscale" if rng.random() < 0.5 else "sharpen", downscale_ratio=int(rng.choice([2, 4])),
        sharpen=(float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.5, 1.0))),
        scale=float(rng.uniform(0.95, 1 / 0.95)),
        translate=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.015, 0.015))),
        elastic_seed=int(rng.integers(2 ** 63)),
        mask_size=(int(rng.integers(192, 257)), int(rng.integers(192, 257))),
        kernel_1=int(rng.choice(ODD_KERNELS)), kernel_2=int(rng.choice(ODD_KERNELS)),
        sigma_2=int(rng.integers(5, 46)), blend_ratio=float(rng.choice(BLEND_RATIOS)))


@dataclasses.dataclass
class Synthesis:
    frames: object  # uint8 [T,H,W,3], numpy or torch as the input was
    mask: np.ndarray  # float32 [T,H,W]: blend weight of the transformed copy (0 outside the fake's region)
    hull: np.ndarray  # bool [T,H,W]: the landmark hull the mask came from
    blended: np.ndarray  # bool [T]: the frames made fake (the others had no landmarks and are left real)
    draws: list  # the BlendDraw of each frame (None where not blended); vb: one draw for all
    jitter: np.ndarray  # float32 [T,3]: vb's per-frame (dx, dy, dscale) of the copy; zeros for sbi
    reach: np.ndarray  # float32 [T]: the mask lies within ``hull`` dilated by this many pixels

    @property
    def missing(self):
        """Frames left real for want of landmarks."""
        return int((~self.blended).sum())


# ---------------------------------------------------------------------------------------------- seeding
def synthesis_rng(seed, epoch, rank, sample):
    """The Generator of one sample's synthesis: a SeedSequence over (seed, epoch, rank, SHA-256 of the sample)."""
    digest = hashlib.sha256(repr(sample).encode()).digest()
    entropy = [int(seed) % 2 ** 64, int(epoch) % 2 ** 64, int(rank) % 2 ** 64,
               int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def synthetic_positions(batch_size, fraction, rng):
    """The positions of a batch to synthesise: round(fraction x batch_size) of them, drawn without replacement."""
    count = min(batch_size, int(round(fraction * batch_size)))
    return np.sort(rng.choice(batch_size, size=count, replace=False)) if count else np.zeros(0, dtype=np.int64)


def landmarks_in_clip(landmarks, regions, size):
    """Landmarks [T,K,2] in decoded-frame pixels -> clip pixels, as ``faces.crops.crop_and_resize`` maps each
    frame's region [T,4] (x1, y1, x2, y2) onto a ``size`` square (isotropic resize, centred zero padding)."""
    out = np.array(landmarks, dtype=np.float64, copy=True)
    for position, (x1, y1, x2, y2) in enumerate(np.asarray(regions, dtype=float)):
        x1, y1 = int(np.floor(x1)), int(np.floor(y1))
        x2, y2 = max(int(np.ceil(x2)), x1 + 1), max(int(np.ceil(y2)), y1 + 1)
        width, height = x2 - x1, y2 - y1
        scale = size / max(width, height)
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_x, pad_y = (size - out_w) // 2, (size - out_h) // 2
        points = out[position]
        points[..., 0] = (points[..., 0] + 0.5 - x1) * out_w / width - 0.5 + pad_x
        points[..., 1] = (points[..., 1] + 0.5 - y1) * out_h / height - 0.5 + pad_y
    return out


# ---------------------------------------------------------------------------------------------- the blend
def _landmark_list(landmarks, count):
    """One [68,2] float array or None (no landmarks) per frame."""
    if landmarks is None:
        return [None] * count
    if len(landmarks) != count:
        raise DfdError(f"synthesis: {len(landmarks)} landmark sets for {count} frames")
    out = []
    for points in landmarks:
        points = np.asarray(points, dtype=np.float64)
        if points.size == 0 or not np.isfinite(points).all():
            out.append(None)
        elif points.shape != (LANDMARK_POINTS, 2):
            raise DfdError(f"synthesis: landmarks of shape {points.shape}, expected ({LANDMARK_POINTS}, 2) "
                           "dlib points per frame")
        else:
            out.append(points)
    return out


def _source_transforms(image, draw):
    """SBI's get_source_transforms on (part of) the copy, uint8 [h,w,3]."""
    if any(draw.rgb_shift):  # (0, 0, 0) when RGBShift was not drawn (p 0.7)
        image = blend.rgb_shift(image, draw.rgb_shift)
    image = blend.hue_saturation_value(image, *draw.hsv_shift)
    image = blend.brightness_contrast(image, draw.brightness, draw.contrast)
    if draw.degrade == "downscale":
        return blend.downscale(image, draw.downscale_ratio)
    return blend.sharpen(image, *draw.sharpen)


def _blend_frame(frame, hull, draw, warp, jitter):
    """Blend one frame uint8 [H,W,3] inside its hull uint8 [H,W]: (box (y0, y1, x0, x1) or None, the blended box
    uint8 [y1-y0,x1-x0,3], mask float32 [H,W]); outside the box the frame is left as it is.

    ``warp`` is the mask's (map_x, map_y) of the draw (``blend.mask_warp``). The copy is made only over the part
    of the frame the box samples (mapped back through the Affine, with a margin for the filters): its transforms
    are pointwise or local, so that is where they matter."""
    height, width = hull.shape
    # the mask: SBI's Affine, then its ElasticTransform (nearest, as albumentations treats masks)
    warped = cv2.remap(hull, *warp, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = blend.blend_mask(warped.astype(np.float32), draw.mask_size, draw.kernel_1, draw.kernel_2, draw.sigma_2)
    mask *= np.float32(draw.blend_ratio)
    rows, columns = np.flatnonzero(mask.max(1) > 0), np.flatnonzero(mask.max(0) > 0)
    if len(rows) == 0:
        return None, None, mask
    box = y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
    # the part of the frame the box samples: the Affine (with vb's per-frame jitter) inverted, in pixels
    scale, translate = draw.scale * (1 + float(jitter[2])), (draw.translate[0] + float(jitter[0]),
                                                             draw.translate[1] + float(jitter[1]))
    xs = (np.array([x0, x1 - 1]) - width / 2 + 0.5 - translate[0] * width) / scale + width / 2 - 0.5
    ys = (np.array([y0, y1 - 1]) - height / 2 + 0.5 - translate[1] * height) / scale + height / 2 - 0.5
    margin = 6  # bilinear sampling, Sharpen's 3x3, RandomDownScale's 4x4 cells
    sx0, sy0 = max(0, (int(xs[0]) - margin) // 4 * 4), max(0, (int(ys[0]) - margin) // 4 * 4)
    sx1, sy1 = min(width, int(xs[1]) + margin + 2), min(height, int(ys[1]) + margin + 2)
    copy = _source_transforms(frame[sy0:sy1, sx0:sx1], draw)
    copy = blend.affine_copy(copy, (sy0, sx0), box, scale, translate, (height, width))
    part = frame[y0:y1, x0:x1].astype(np.float32)
    # part + (copy - part) w: exactly the part where w is 0, and within 0..255 (both ends are)
    composite = np.rint((copy - part) * mask[y0:y1, x0:x1, None] + part)
    return box, np.clip(composite, 0, 255).astype(np.uint8), mask


def _synthesise(frames, landmarks, draws, jitter):
    """Blend the frames that have landmarks, each with its draw; frames sharing one draw object share its warp."""
    as_torch = isinstance(frames, torch.Tensor)
    array = frames.cpu().numpy() if as_torch else np.asarray(frames)
    single = array.ndim == 3
    if single:
        array, landmarks = array[None], [landmarks]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise DfdError(f"synthesis: frames must be uint8 [T,H,W,3], got {array.dtype} {list(array.shape)}")
    count, height, width = array.shape[:3]
    points = _landmark_list(landmarks, count)
    draws = [draw if lm is not None else None for draw, lm in zip(draws(count) if callable(draws) else draws, points)]
    out, mask = array.copy(), np.zeros((count, height, width), dtype=np.float32)
    hull, reach = np.zeros((count, height, width), dtype=np.uint8), np.zeros(count, dtype=np.float32)
    groups = {}
    for position, draw in enumerate(draws):
        if draw is not None:
            groups.setdefault(id(draw), []).append(position)
            hull[position] = blend.hull_mask(points[position], height, width, draw.hull_type)
    for positions in groups.values():
        draw = draws[positions[0]]
        *warp, warp_reach = blend.mask_warp(np.random.default_rng(draw.elastic_seed), height, width, draw.scale,
                                            draw.translate, ELASTIC_ALPHA, ELASTIC_SIGMA)
        reach[positions] = warp_reach + blend.blend_reach(height, width, draw.mask_size, draw.kernel_2)
        for position in positions:
            box, blended, mask[position] = _blend_frame(array[position], hull[position], draw, warp,
                                                        jitter[position])
            if box is not None:
                out[position, box[0]:box[1], box[2]:box[3]] = blended
    blended = np.array([draw is not None for draw in draws])
    jitter = np.where(blended[:, None], jitter, 0).astype(np.float32)
    hull = hull.astype(bool)
    if single:
        out, mask, hull = out[0], mask[0], hull[0]
    return Synthesis(torch.from_numpy(out) if as_torch else out, mask, hull, blended, draws, jitter, reach)


@SYNTHESES.register("sbi")
def sbi(frames, landmarks, rng):
    """Self-blended images: every frame blended with its own draw (SBI, CVPR'22)."""
    return _synthesise(frames, landmarks, lambda count: [draw_blend(rng) for _ in range(count)],
                       np.zeros((_frame_count(frames), 3), dtype=np.float32))


@SYNTHESES.register("vb")
def vb(frames, landmarks, rng):
    """Video-level blending: one draw for the whole clip, the copy jittered frame by frame (VB, CVPR'25)."""
    draw, count = draw_blend(rng), _frame_count(frames)
    jitter = np.concatenate([rng.uniform(-VB_JITTER["translate"], VB_JITTER["translate"], size=(count, 2)),
                             rng.uniform(-VB_JITTER["scale"], VB_JITTER["scale"], size=(count, 1))], axis=1)
    return _synthesise(frames, landmarks, [draw] * count, jitter.astype(np.float32))


def _frame_count(frames):
    return 1 if len(frames.shape) == 3 else int(frames.shape[0])
