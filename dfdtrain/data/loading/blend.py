"""Image operations of the blending synthesis (``dfdtrain.data.loading.synthesis``): landmark hull masks, the
source transforms and the blend mask, written with torch, numpy and PIL (no OpenCV, albumentations or imgaug).

Each function mirrors one step of the official code, named in its docstring (``SBI`` = mapooon/SelfBlendedImages
at 9fe4efe1192cb7448fb51a2b97a54e1312188160; ``Face X-ray masks`` = ``training/dataset/library/DeepFakeMask.py``
of SCLBD/DeepfakeBench at 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04, the copy of AlgoHunt/Face-Xray that SBI's
README installs for ``random_get_hull``). Images are float32 torch tensors [N,3,H,W] holding 0..255 values,
masks float32 [N,1,H,W] in [0, 1]; everything runs on the CPU of a loader worker.
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------------------------- hull masks
HULL_TYPES = ("dfl_full", "extended", "components", "facehull")  # random_get_hull's hull_type 0..3


def convex_hull(points):
    """The convex hull of 2-D points (Andrew's monotone chain), counter-clockwise, as an [n,2] array."""
    points = sorted(set(map(tuple, np.asarray(points, dtype=float).tolist())))
    if len(points) <= 2:
        return np.array(points)

    def half(sequence):
        chain = []
        for point in sequence:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (point[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (point[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(point)
        return chain

    lower, upper = half(points), half(reversed(points))
    return np.array(lower[:-1] + upper[:-1])


def _hull_parts(lm, hull_type):
    """The landmark groups whose convex hulls make a mask (Face X-ray masks: dfl_full, extended, components,
    facehull), for 68 dlib points (integers, as the original casts them)."""
    if hull_type == "facehull":
        return [lm]
    if hull_type == "dfl_full":
        return [np.concatenate(p) for p in (
            (lm[0:17], lm[48:68], lm[0:1], lm[8:9], lm[16:17]),  # jaw
            (lm[27:31], lm[33:34]),  # nose ridge
            (lm[17:27], lm[0:1], lm[27:28], lm[16:17], lm[33:34]))]  # eyes
    if hull_type == "extended":  # components, eyebrows pushed half their height up the forehead
        lm = lm.copy()
        left_mid, right_mid = (lm[36] + lm[0]) // 2, (lm[16] + lm[45]) // 2
        bottom_left = np.array(((lm[36] + left_mid) // 2, lm[36], lm[37], lm[38], lm[39]))
        bottom_right = np.array((lm[42], lm[43], lm[44], lm[45], (lm[45] + right_mid) // 2))
        lm[17:22] = lm[17:22] + (lm[17:22] - bottom_left) // 2
        lm[22:27] = lm[22:27] + (lm[22:27] - bottom_right) // 2
    return [np.concatenate(p) for p in (
        (lm[0:9], lm[17:18]), (lm[8:17], lm[26:27]), (lm[17:20], lm[8:9]), (lm[24:27], lm[8:9]),
        (lm[19:25], lm[8:9]), (lm[17:22], lm[27:28], lm[31:36], lm[8:9]),
        (lm[22:27], lm[27:28], lm[31:36], lm[8:9]), (lm[27:31], lm[31:36]))]


def hull_mask(landmarks, height, width, hull_type):
    """bool [H,W]: the union of the filled convex hulls of ``hull_type``'s landmark groups (random_get_hull)."""
    landmarks = np.rint(np.asarray(landmarks, dtype=float)).astype(np.int64)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for part in _hull_parts(landmarks, hull_type):
        hull = convex_hull(part)
        if len(hull) >= 3:
            draw.polygon([tuple(point) for point in hull.tolist()], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


# ---------------------------------------------------------------------------------------------- filters
def gaussian_taps(ksize, sigma=0.0):
    """OpenCV's 1-D Gaussian kernel of ``ksize`` taps; ``sigma <= 0`` means OpenCV's default for that size."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    positions = torch.arange(ksize, dtype=torch.float32) - (ksize - 1) / 2
    taps = torch.exp(-positions ** 2 / (2 * float(sigma) ** 2))
    return taps / taps.sum()


@functools.lru_cache(maxsize=512)
def _blur_matrix(size, ksize, sigma, mode):
    """[size,size]: a 1-D Gaussian filter of ``ksize`` taps along one axis as a matrix (borders folded in)."""
    taps, radius = gaussian_taps(ksize, sigma).numpy().astype(np.float64), ksize // 2
    rows = np.repeat(np.arange(size), ksize)
    sources = rows + np.tile(np.arange(ksize) - radius, size)
    weights = np.tile(taps, size)
    if mode == "reflect":  # OpenCV's reflect-101, folded again where a kernel outgrows the image
        period = max(2 * size - 2, 1)
        sources = np.abs(sources) % period
        sources = np.where(sources >= size, period - sources, sources)
    else:  # zeros outside
        keep = (sources >= 0) & (sources < size)
        rows, sources, weights = rows[keep], sources[keep], weights[keep]
    matrix = np.bincount(rows * size + sources, weights, minlength=size * size).reshape(size, size)
    return torch.from_numpy(matrix.astype(np.float32))


def gaussian_blur(images, ksize, sigma=0.0, mode="reflect"):
    """cv2.GaussianBlur of [...,H,W] (``mode``: reflect-101, OpenCV's default border, or constant zeros), as two
    matrix products (faster on a CPU than a depthwise convolution with up to 57 taps)."""
    height, width = images.shape[-2:]
    rows = _blur_matrix(height, ksize, float(sigma), mode)
    columns = _blur_matrix(width, ksize, float(sigma), mode)
    return rows @ images @ columns.T


def resize(images, height, width):
    """cv2.resize INTER_LINEAR: bilinear, half-pixel centres, no antialiasing."""
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- source transforms
def rgb_shift(images, shift):
    """alb.RGBShift: add a per-channel shift [3] (uint8 values, clipped)."""
    return (images + torch.as_tensor(shift, dtype=torch.float32).view(1, 3, 1, 1)).clamp(0, 255)


def _rgb_to_hsv_uint8(images):
    """OpenCV's 8-bit RGB -> HSV (H in 0..179 = degrees/2, S and V in 0..255), rounded as OpenCV does."""
    red, green, blue = images.unbind(1)
    value, low = images.amax(1), images.amin(1)
    delta = value - low
    inverse = 60 / delta.clamp(min=1e-6)
    hue = torch.where(value == red, (green - blue) * inverse,
                      torch.where(value == green, (blue - red) * inverse + 120, (red - green) * inverse + 240))
    hue = torch.round(hue.remainder_(360).mul_(delta > 0) / 2).remainder_(180)
    saturation = torch.round(255 * delta / value.clamp(min=1e-6))
    return hue, saturation, value


def _hsv_to_rgb_uint8(hue, saturation, value):
    """OpenCV's 8-bit HSV -> RGB: channel n (5, 3, 1 for R, G, B) is V - V S clip(min(k, 4 - k), 0, 1) with
    k = (n + H / 30) mod 6."""
    offsets = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (offsets + (hue / 30).unsqueeze(1)).remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    value = value.unsqueeze(1)
    return (value - value * (saturation / 255).unsqueeze(1) * ramp).round_().clamp_(0, 255)


def hue_saturation_value(images, hue_shift, saturation_shift, value_shift):
    """alb.HueSaturationValue on uint8 images, as albumentations 1.x does it: a round trip through OpenCV's 8-bit
    HSV (itself a small quantisation of colour) with LUT shifts truncated to integers; SBI's limits (+-0.3) make
    every shift 0 or -1 level."""
    hue, saturation, value = _rgb_to_hsv_uint8(images)
    hue = torch.floor((hue + hue_shift) % 180)
    saturation = torch.floor((saturation + saturation_shift).clamp(0, 255))
    value = torch.floor((value + value_shift).clamp(0, 255))
    return _hsv_to_rgb_uint8(hue, saturation, value)


def brightness_contrast(images, brightness, contrast):
    """alb.RandomBrightnessContrast (brightness_by_max): x * (1 + contrast) + brightness * 255, uint8 LUT."""
    return torch.floor((images * (1 + contrast) + brightness * 255).clamp(0, 255))


def downscale(images, ratio):
    """SBI's RandomDownScale: nearest-neighbour down by ``ratio`` (2 or 4), bilinear back up."""
    height, width = images.shape[2:]
    small = F.interpolate(images, size=(max(1, int(height / ratio)), max(1, int(width / ratio))), mode="nearest")
    return resize(small, height, width).round().clamp(0, 255)


def sharpen(images, alpha, lightness):
    """alb.Sharpen: (1 - alpha) * identity + alpha * [[-1,-1,-1],[-1,8+lightness,-1],[-1,-1,-1]], 3x3, computed as
    (1 + alpha (8 + lightness)) x - alpha box3(x) (the 3x3 box sum is exact on integer levels)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    rows = padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    return (images * (1 + alpha * (8 + lightness)) - box * alpha).round_().clamp_(0, 255)


# ---------------------------------------------------------------------------------------------- warps
def identity_grid(count, height, width):
    """grid_sample's grid [N,H,W,2] that samples every pixel at itself (half-pixel centres); read-only."""
    return _identity(height, width).expand(count, -1, -1, -1)


@functools.lru_cache(maxsize=16)
def _identity(height, width):
    return F.affine_grid(torch.eye(2, 3).unsqueeze(0), (1, 1, height, width), align_corners=False)


def affine_grid(grid, scale, translate):
    """alb.Affine(scale, translate_percent) about the image centre, for an output sampled at ``grid`` [N,H,W,2]:
    the output at p samples the input at (p - c - t) / s + c. ``scale`` [N], ``translate`` [N,2] as fractions of
    (W, H) (a fraction is 2 of grid_sample's normalised units)."""
    scale = torch.as_tensor(scale, dtype=torch.float32).view(-1, 1, 1, 1)
    translate = torch.as_tensor(translate, dtype=torch.float32).view(-1, 1, 1, 2)
    return (grid - 2 * translate) / scale


def elastic_displacement(noise, alpha, sigma):
    """alb.ElasticTransform's field (albumentations 1.x, ``approximate=False``): uniform noise [2,H,W] in
    [-1, 1] blurred by a Gaussian of ``sigma`` (zero border, truncated at 4 sigma as scipy does), times ``alpha``:
    pixels [2,H,W] (dx, dy). Computed exactly on every other pixel and interpolated bilinearly between (the
    field is smooth at sigma 7: the in-between error is ~1 % of its size), 4x less work."""
    height, width = noise.shape[-2:]
    noise = torch.as_tensor(noise, dtype=torch.float32)
    coarse = _banded_product(height, float(sigma), noise)  # rows blurred: [2,h',W]
    coarse = _banded_product(width, float(sigma), coarse.transpose(-1, -2)).transpose(-1, -2)
    return F.interpolate(coarse.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=True)[0] * alpha


def _banded_product(size, sigma, images, blocks=4):
    """``_coarse_blur_matrix(size, sigma) @ images`` [...,size,K], block by block of output rows over only the
    input rows each block reaches (the matrix is a band: the rest are zeros)."""
    return torch.cat([part @ images[..., start:stop, :] for part, start, stop in _bands(size, sigma, blocks)], -2)


@functools.lru_cache(maxsize=16)
def _bands(size, sigma, blocks):
    matrix = _coarse_blur_matrix(size, sigma)
    out = []
    for rows in torch.arange(len(matrix)).tensor_split(min(blocks, len(matrix))):
        used = torch.nonzero(matrix[rows].abs().amax(0) > 0)[:, 0]
        start, stop = int(used[0]), int(used[-1]) + 1
        out.append((matrix[rows, start:stop].contiguous(), start, stop))
    return out


@functools.lru_cache(maxsize=16)
def _coarse_blur_matrix(size, sigma):
    """[n,size]: the Gaussian (zero border, 4 sigma) at n = size // 2 + 1 points spread evenly over 0..size-1."""
    radius = int(math.ceil(4 * sigma))
    norm = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2)).sum()
    positions = np.linspace(0, size - 1, size // 2 + 1)[:, None]
    offsets = positions - np.arange(size)[None, :]
    weights = np.where(np.abs(offsets) <= radius, np.exp(-offsets ** 2 / (2 * sigma ** 2)), 0.0) / norm
    return torch.from_numpy(weights.astype(np.float32))


def pixels_to_grid(displacement, height, width):
    """A displacement in pixels [...,2,H,W] as an offset of grid_sample's normalised grid [...,H,W,2]."""
    scale = torch.tensor([2.0 / width, 2.0 / height]).view(2, 1, 1)
    return (displacement * scale).movedim(-3, -1)


def grid_reach(grid):
    """The farthest any output pixel samples from itself, in pixels, per image [N] (the mask's reach)."""
    count, height, width = grid.shape[:3]
    offset = (grid - identity_grid(count, height, width)) * torch.tensor([width / 2.0, height / 2.0])
    across, down = offset.square_().unbind(-1)
    return (across + down).flatten(1).amax(1).sqrt_()


# ---------------------------------------------------------------------------------------------- blend mask
def blend_mask(mask, size, kernel_1, kernel_2, sigma_2):
    """SBI's get_blend_mask for one mask [H,W] float (``blend_masks`` of a batch of one)."""
    return blend_masks(mask.unsqueeze(0), size, kernel_1, kernel_2, sigma_2)[0]


def blend_masks(masks, size, kernel_1, kernel_2, sigma_2):
    """SBI's get_blend_mask for each mask [N,H,W] float: resize to ``size`` (h, w), erode (a Gaussian blur of
    ``kernel_1`` normalised to its maximum keeps only the pixels whose whole window is inside: a min filter of
    that window, computed exactly as one here), blur with ``kernel_2`` / ``sigma_2``, normalise to 1, resize back.
    An empty erosion (a hull thinner than the kernel, where the original divides by zero) keeps the mask. The
    erosion and the blur run only over the masks' bounding box (plus the filters' reach): zeros elsewhere."""
    count, height, width = masks.shape
    small = resize(masks.unsqueeze(1), *size)[:, 0]
    box = _nonzero_box(small.amax(0))
    if box is None:
        return torch.zeros((count, height, width))
    radius = kernel_1 // 2
    y0, x0 = max(0, box[0] - radius), max(0, box[2] - radius)
    y1, x1 = min(size[0], box[1] + radius), min(size[1], box[3] + radius)
    crop = small[:, y0:y1, x0:x1]
    eroded = erode(crop.unsqueeze(1), kernel_1)[:, 0]
    empty = eroded.flatten(1).amax(1) <= 0
    if bool(empty.any()):
        eroded = torch.where(empty.view(-1, 1, 1), (crop > 0).float(), eroded)
    inner = _nonzero_box(eroded.amax(0))
    if inner is None:
        return torch.zeros((count, height, width))
    ey0, ey1, ex0, ex1 = inner[0] + y0, inner[1] + y0, inner[2] + x0, inner[3] + x0
    eroded = eroded[:, inner[0]:inner[1], inner[2]:inner[3]]
    rows = _blur_matrix(size[0], kernel_2, float(sigma_2), "reflect")[:, ey0:ey1]
    columns = _blur_matrix(size[1], kernel_2, float(sigma_2), "reflect")[:, ex0:ex1]
    oy0, oy1 = _band(rows)
    ox0, ox1 = _band(columns)
    blurred = torch.zeros((count, 1) + tuple(size))
    part = rows[oy0:oy1] @ eroded @ columns[ox0:ox1].T
    peak = part.flatten(1).amax(1).view(-1, 1, 1)
    blurred[:, 0, oy0:oy1, ox0:ox1] = torch.where(peak > 0, part / peak.clamp(min=1e-30), 0.0)
    return resize(blurred, height, width)[:, 0].clamp_(0, 1)


def _nonzero_box(image):
    """(y0, y1, x0, x1) of the non-zero pixels of a [H,W] tensor, or None."""
    rows, columns = torch.nonzero(image.amax(1) > 0)[:, 0], torch.nonzero(image.amax(0) > 0)[:, 0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


def _band(matrix):
    """The first and past-the-last rows of a [n,k] matrix with a non-zero entry."""
    rows = torch.nonzero(matrix.abs().amax(1) > 0)[:, 0]
    return int(rows[0]), int(rows[-1]) + 1


def erode(mask, size):
    """A binary min filter of a ``size`` square on [N,1,H,W] (the image continued beyond its edge), from box
    sums of an integral image (exact in float32 up to 2^24 pixels): 1 where the whole window is 1."""
    radius = size // 2
    inside = F.pad((mask >= 1 - 1e-6).float(), (radius + 1, radius, radius + 1, radius), value=1.0)
    inside[..., 0, :] = 0
    inside[..., :, 0] = 0
    table = inside.cumsum(-1).cumsum(-2)
    boxes = (table[..., size:, size:] - table[..., :-size, size:] - table[..., size:, :-size]
             + table[..., :-size, :-size])
    return (boxes >= size * size - 0.5).float()


def blend_reach(height, width, size, kernel_2):
    """How far (pixels of the [H,W] image) ``blend_mask`` can spread a mask: the blur's radius at the resized
    scale plus one pixel for each bilinear resize."""
    scale = max(height / size[0], width / size[1])
    return (kernel_2 // 2 + 2) * scale + 1
