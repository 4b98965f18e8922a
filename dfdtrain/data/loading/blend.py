"""Image operations of the blending synthesis (``dfdtrain.data.loading.synthesis``): landmark hull masks, the
source transforms, the mask's warp and the blend mask, with OpenCV on numpy arrays as the official code has them
(albumentations' transforms are written out here; neither albumentations nor imgaug is needed).

Each function mirrors one step of the official code, named in its docstring (``SBI`` = mapooon/SelfBlendedImages
at 9fe4efe1192cb7448fb51a2b97a54e1312188160; ``Face X-ray masks`` = ``training/dataset/library/DeepFakeMask.py``
of SCLBD/DeepfakeBench at 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04, the copy of AlgoHunt/Face-Xray that SBI's
README installs for ``random_get_hull``). Images are uint8 numpy arrays [H,W,3] (RGB), masks float32 [H,W] in
[0, 1]; everything runs on the CPU of a loader worker, one frame at a time.

OpenCV runs sequentially here (``cv2.setNumThreads(0)``): a loader worker is already one process per core, as
torch runs one thread in a DataLoader worker; the images are too small for a thread pool to pay, and a pool made
before the workers fork can hang them.
"""

import cv2
import numpy as np

cv2.setNumThreads(0)

# ---------------------------------------------------------------------------------------------- hull masks
HULL_TYPES = ("dfl_full", "extended", "components", "facehull")  # random_get_hull's hull_type 0..3


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
    """uint8 [H,W], 1 inside: the union of the filled convex hulls of ``hull_type``'s landmark groups
    (random_get_hull: cv2.convexHull then cv2.fillConvexPoly; the points rounded, where the original truncates)."""
    landmarks = np.rint(np.asarray(landmarks, dtype=float)).astype(np.int32)
    mask = np.zeros((height, width), dtype=np.uint8)
    for part in _hull_parts(landmarks, hull_type):
        cv2.fillConvexPoly(mask, cv2.convexHull(part), 1)
    return mask


# ---------------------------------------------------------------------------------------------- source transforms
def rgb_shift(image, shift):
    """alb.RGBShift: add a per-channel shift (r, g, b) in levels, clipped to 0..255."""
    table = np.clip(np.arange(256)[:, None] + np.asarray(shift)[None, :], 0, 255).astype(np.uint8)
    return cv2.LUT(image, table.reshape(256, 1, 3))


def hue_saturation_value(image, hue_shift, saturation_shift, value_shift):
    """alb.HueSaturationValue on uint8 images, as albumentations 1.x does it (``_shift_hsv_uint8``): OpenCV's 8-bit
    HSV round trip (itself a small quantisation of colour) with the shifts applied by truncating lookup tables;
    SBI's limits (+-0.3) make every shift 0 or -1 level."""
    levels = np.arange(256, dtype=np.int16)
    table = np.stack([np.mod(levels + hue_shift, 180), np.clip(levels + saturation_shift, 0, 255),
                      np.clip(levels + value_shift, 0, 255)], axis=-1).astype(np.uint8)
    hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), table.reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def brightness_contrast(image, brightness, contrast):
    """alb.RandomBrightnessContrast (brightness_by_max): x * (1 + contrast) + brightness * 255, a float32 lookup
    table truncated to uint8."""
    table = np.arange(256, dtype=np.float32) * np.float32(1 + contrast) + np.float32(brightness * 255)
    return cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8))


def downscale(image, ratio):
    """SBI's RandomDownScale: nearest-neighbour down by ``ratio`` (2 or 4), bilinear back up."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, int(width / ratio)), max(1, int(height / ratio))),
                       interpolation=cv2.INTER_NEAREST)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def sharpen(image, alpha, lightness):
    """alb.Sharpen: the 3x3 kernel (1 - alpha) * identity + alpha * [[-1,-1,-1],[-1,8+lightness,-1],[-1,-1,-1]]
    by cv2.filter2D (reflect-101 border, rounded and saturated to uint8)."""
    kernel = np.full((3, 3), -alpha, dtype=np.float32)
    kernel[1, 1] = 1 - alpha + alpha * (8 + lightness)
    return cv2.filter2D(image, -1, kernel)


def affine_copy(image, origin, box, scale, translate, size):
    """alb.Affine(scale, translate_percent) about the image centre, the copy's half: the output pixels
    ``box`` (y0, y1, x0, x1) of a ``size`` (H, W) image, bilinear with replicated borders, where ``image`` is the
    part of the whole image whose top-left pixel is ``origin`` (y, x). The output at p samples the image at
    A^-1(p) = (p - c - t) / s + c, ``translate`` t as fractions of (W, H)."""
    (height, width), (y0, _, x0, _) = size, box
    centre_x, centre_y = width / 2 - 0.5, height / 2 - 0.5
    matrix = np.array([[1 / scale, 0, (x0 - centre_x - translate[0] * width) / scale + centre_x - origin[1]],
                       [0, 1 / scale, (y0 - centre_y - translate[1] * height) / scale + centre_y - origin[0]]])
    return cv2.warpAffine(image, matrix, (box[3] - box[2], box[1] - box[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------------------------- the mask's warp
def mask_warp(rng, height, width, scale, translate, alpha, sigma):
    """SBI's warp of the mask, alb.Affine(scale, translate_percent) about the image centre then
    alb.ElasticTransform(alpha, sigma): (map_x, map_y, reach) for cv2.remap, where the output at p samples the
    mask at A^-1(p + e(p)), A^-1(q) = (q - c - t) / s + c, ``translate`` t as fractions of (W, H), e the elastic
    field (``elastic_field``, noise from ``rng``), and ``reach`` is the farthest any p samples from itself, in
    pixels."""
    field = elastic_field(rng, height, width, alpha, sigma)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    centre_x, centre_y = width / 2 - 0.5, height / 2 - 0.5
    map_x = (xs + field[..., 0] - np.float32(centre_x + translate[0] * width)) / np.float32(scale) + centre_x
    map_y = (ys + field[..., 1] - np.float32(centre_y + translate[1] * height)) / np.float32(scale) + centre_y
    reach = float(np.sqrt(np.square(map_x - xs) + np.square(map_y - ys)).max())
    return map_x.astype(np.float32), map_y.astype(np.float32), reach


def elastic_field(rng, height, width, alpha, sigma):
    """alb.ElasticTransform's displacement (albumentations 1.x, ``approximate=False``: uniform noise in [-1, 1]
    on every pixel blurred by a Gaussian of ``sigma``, zero border, truncated at 4 sigma, times ``alpha``) as
    float32 [H,W,2] (dx, dy) pixels, made at half resolution: the noise drawn from ``rng`` on every other pixel,
    blurred there by sigma / 2, scaled by alpha / 2 (the variance one quarter of the noise samples leaves) and
    resized up bilinearly. It has the original's statistics (std 1.155 vs 1.162 px, correlation at 10 px 0.594
    vs 0.593, over 200 fields at 224 px) for a quarter of the noise and a sixteenth of the blurring."""
    noise = rng.random(((height + 1) // 2, (width + 1) // 2, 2), dtype=np.float32) * 2 - 1
    field = cv2.GaussianBlur(noise, (0, 0), sigma / 2, borderType=cv2.BORDER_CONSTANT)
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR) * np.float32(alpha / 2)


# ---------------------------------------------------------------------------------------------- blend mask
def blend_mask(mask, size, kernel_1, kernel_2, sigma_2):
    """SBI's get_blend_mask of a float32 mask [H,W]: resize to ``size`` (h, w), erode (a Gaussian blur of
    ``kernel_1`` normalised to its maximum keeps only the pixels whose whole window is inside: a min filter of
    that window, computed exactly as one here, the image continued beyond its edge), blur with ``kernel_2`` /
    ``sigma_2``, normalise to 1, resize back. An empty erosion (a hull thinner than the kernel, where the
    original divides by zero) keeps the mask; an empty mask stays empty."""
    height, width = mask.shape
    small = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    eroded = cv2.erode((small >= 1 - 1e-6).astype(np.uint8), np.ones((kernel_1, kernel_1), dtype=np.uint8))
    if not eroded.any():
        eroded = (small > 0).astype(np.uint8)
        if not eroded.any():
            return np.zeros((height, width), dtype=np.float32)
    blurred = cv2.GaussianBlur(eroded.astype(np.float32), (kernel_2, kernel_2), sigma_2)
    blurred *= np.float32(1 / blurred.max())
    return np.clip(cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)


def blend_reach(height, width, size, kernel_2):
    """How far (pixels of the [H,W] image) ``blend_mask`` can spread a mask: the blur's radius at the resized
    scale plus one pixel for each bilinear resize."""
    scale = max(height / size[0], width / size[1])
    return (kernel_2 // 2 + 2) * scale + 1
