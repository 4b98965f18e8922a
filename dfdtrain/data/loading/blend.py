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
@functools.lru_cache(maxsize=1024)
def gaussian_taps(ksize, sigma=0.0):
    """OpenCV's 1-D Gaussian kernel of ``ksize`` taps (float64 numpy, read-only); ``sigma <= 0`` means OpenCV's
    default for that size."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    positions = torch.arange(ksize, dtype=torch.float32) - (ksize - 1) / 2
    taps = torch.exp(-positions ** 2 / (2 * float(sigma) ** 2))
    taps = (taps / taps.sum()).numpy().astype(np.float64)
    taps.flags.writeable = False
    return taps


def _blur_band(size, ksize, sigma, start, stop):
    """(matrix, (first, past-the-last)): a 1-D Gaussian filter of ``ksize`` taps along an axis of ``size`` with
    OpenCV's reflect-101 border (folded again where a kernel outgrows the axis), as the [rows, stop-start] block
    of its matrix that reads inputs ``start:stop``: the output rows first..past-the-last, the only ones they reach."""
    taps, radius = gaussian_taps(ksize, sigma), ksize // 2
    rows = np.repeat(np.arange(size), ksize)
    sources = rows + np.tile(np.arange(ksize) - radius, size)
    weights = np.tile(taps, size)
    period = max(2 * size - 2, 1)
    sources = np.abs(sources) % period
    sources = np.where(sources >= size, period - sources, sources)
    keep = (sources >= start) & (sources < stop)
    rows, sources, weights = rows[keep], sources[keep] - start, weights[keep]
    first, last = int(rows.min()), int(rows.max()) + 1
    matrix = np.bincount((rows - first) * (stop - start) + sources, weights,
                         minlength=(last - first) * (stop - start)).reshape(last - first, stop - start)
    return torch.from_numpy(matrix.astype(np.float32)), (first, last)


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
def mask_warp(rng, height, width, scale, translate, alpha, sigma):
    """SBI's warp of the mask, alb.Affine(scale, translate_percent) about the image centre then
    alb.ElasticTransform(alpha, sigma): (grid [1,H,W,2] for grid_sample, reach), where the output at p samples the
    mask at A^-1(p + e(p)), A^-1(q) = (q - c - t) / s + c, ``translate`` t as fractions of (W, H), e the elastic
    field (``elastic_field``, noise from ``rng``), and ``reach`` is the farthest any p samples from itself, in pixels.

    Computed at the elastic field's grid points (every other pixel) and interpolated bilinearly: the identity and
    the affine map are linear in p, so interpolation gives them exactly, and the interpolated offset is never
    longer than the longest offset at the points (so ``reach``, taken there, bounds every pixel's)."""
    (row_count, _), (column_count, _) = _coarse_grid(height), _coarse_grid(width)
    ys = torch.linspace(0, height - 1, row_count).view(-1, 1).expand(-1, column_count)
    xs = torch.linspace(0, width - 1, column_count).view(1, -1).expand(row_count, -1)
    field = elastic_field(rng, height, width, alpha, sigma)  # pixels [2,n,m]
    centre_x, centre_y = width / 2 - 0.5, height / 2 - 0.5
    sample_x = (xs + field[0] - centre_x - translate[0] * width) / scale + centre_x
    sample_y = (ys + field[1] - centre_y - translate[1] * height) / scale + centre_y
    reach = float(((sample_x - xs).square() + (sample_y - ys).square()).amax().sqrt())
    points = torch.stack([(2 * sample_x + 1) / width - 1, (2 * sample_y + 1) / height - 1])  # normalised
    grid = F.interpolate(points.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=True)
    return grid.permute(0, 2, 3, 1), reach


def elastic_field(rng, height, width, alpha, sigma):
    """alb.ElasticTransform's displacement (albumentations 1.x, ``approximate=False``: uniform noise in [-1, 1]
    on every pixel blurred by a Gaussian of ``sigma``, zero border, truncated at 4 sigma as scipy does, times
    ``alpha``) at the ``_coarse_grid`` points of every other pixel: pixels [2,n,m] (dx, dy). The noise is drawn
    from ``rng`` (a numpy Generator) at those points only, scaled by sqrt(dy dx) for their spacing d ~ 2, so the
    blurred field has the original's variance and correlation (a Gaussian 3.5 points wide sums enough of them:
    std 1.155 vs 1.158 px, correlation at 10 px 0.604 vs 0.606, over 200 fields at 224 px); 4x less noise and
    16x less blurring than on every pixel."""
    (row_count, row_spacing), (column_count, column_spacing) = _coarse_grid(height), _coarse_grid(width)
    noise = torch.from_numpy(rng.random((2, row_count, column_count), dtype=np.float32)).mul_(2).sub_(1)
    field = _banded_product(_coarse_bands(height, float(sigma)), noise)  # along y
    field = _banded_product(_coarse_bands(width, float(sigma)), field.transpose(-1, -2)).transpose(-1, -2)
    return field * (alpha * math.sqrt(row_spacing * column_spacing))


def _coarse_grid(size):
    """(n, spacing): the points every other pixel of an axis of ``size`` (both ends included)."""
    count = size // 2 + 1
    return count, (size - 1) / max(count - 1, 1)


def _banded_product(bands, images):
    """``matrix @ images`` [...,n,K] for a band matrix given as ``_coarse_bands``: block by block of output rows
    over only the input rows each block reaches (the rest of the matrix is zeros)."""
    return torch.cat([part @ images[..., start:stop, :] for part, start, stop in bands], -2)


@functools.lru_cache(maxsize=16)
def _coarse_bands(size, sigma, blocks=4):
    """The Gaussian (zero border, 4 sigma, normalised as on whole pixels) between the ``_coarse_grid`` points of
    an axis of ``size``, as [n,n] in ``blocks`` row blocks (matrix block, first input row, past-the-last)."""
    radius = int(math.ceil(4 * sigma))
    norm = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2)).sum()
    count, _ = _coarse_grid(size)
    positions = np.linspace(0, size - 1, count)
    offsets = positions[:, None] - positions[None, :]
    weights = np.where(np.abs(offsets) <= radius, np.exp(-offsets ** 2 / (2 * sigma ** 2)), 0.0) / norm
    matrix = torch.from_numpy(weights.astype(np.float32))
    out = []
    for rows in torch.arange(count).tensor_split(min(blocks, count)):
        used = torch.nonzero(matrix[rows].abs().amax(0) > 0)[:, 0]
        start, stop = int(used[0]), int(used[-1]) + 1
        out.append((matrix[rows, start:stop].contiguous(), start, stop))
    return out


# ---------------------------------------------------------------------------------------------- blend mask
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
    rows, (oy0, oy1) = _blur_band(size[0], kernel_2, float(sigma_2), ey0, ey1)
    columns, (ox0, ox1) = _blur_band(size[1], kernel_2, float(sigma_2), ex0, ex1)
    blurred = torch.zeros((count, 1) + tuple(size))
    part = rows @ eroded @ columns.T
    peak = part.flatten(1).amax(1).view(-1, 1, 1)
    blurred[:, 0, oy0:oy1, ox0:ox1] = torch.where(peak > 0, part / peak.clamp(min=1e-30), 0.0)
    return resize(blurred, height, width)[:, 0].clamp_(0, 1)


def _nonzero_box(image):
    """(y0, y1, x0, x1) of the non-zero pixels of a [H,W] tensor, or None."""
    rows, columns = torch.nonzero(image.amax(1) > 0)[:, 0], torch.nonzero(image.amax(0) > 0)[:, 0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


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
