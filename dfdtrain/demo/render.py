"""Rendering the synthetic dataset's frames: float32 RGB in [0, 1], one frame at a time, vectorised over pixels.

A face-like head (skin ellipse, hair cap, blinking eyes, eyebrows, nose shading, a talking mouth) drawn from a
``Person`` and a ``ClipPlan`` (dfdtrain.demo.plans) over a drifting textured background, with brightness drift
and sensor noise; in a fake clip the inner face is replaced by a blurred, colour-shifted copy blended in with a
seam ring. ``render_clip`` yields the uint8 frames with their ground-truth face boxes and inner-face ellipses.
"""

import math

import numpy as np

# The inner face that a fake swaps, in units of the face ellipse radii (rx, ry): centred on the features
# (which slide sideways with the head turn), it covers eyes, eyebrows, nose and mouth but stays inside the
# skin (below the hairline, above the chin), so its seam ring runs over plain cheek skin.
INNER_FACE_CENTER_DY = 0.08
INNER_FACE_RX = 0.64
INNER_FACE_RY = 0.68


def _window(shape, cx, cy, rx, ry, margin):
    """Slices (rows, cols) of the frame around an ellipse's bounding box plus `margin` pixels.

    Drawing only inside this window keeps a frame cheap: most features cover a few dozen pixels.
    """
    height, width = shape[:2]
    rows = slice(max(0, int(cy - ry - margin)), max(0, min(height, int(math.ceil(cy + ry + margin)) + 1)))
    cols = slice(max(0, int(cx - rx - margin)), max(0, min(width, int(math.ceil(cx + rx + margin)) + 1)))
    return rows, cols


def _ellipse(xx, yy, cx, cy, rx, ry, edge=1.0):
    """Anti-aliased coverage of an ellipse (edge about `edge` pixels wide) and its normalised radius."""
    radius = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - radius) * (min(rx, ry) / edge) + 0.5, 0.0, 1.0), radius


def _paint(image, coverage, colour):
    """Alpha-blend `colour` (RGB or an HxWx3 array) over `image` (in place) where `coverage` is > 0."""
    alpha = coverage[..., None]
    image *= 1.0 - alpha
    image += alpha * colour


def _draw_ellipse(image, grid, cx, cy, rx, ry, colour, opacity=1.0, edge=1.0):
    """Paint a filled, anti-aliased ellipse of `colour` into `image` (in place)."""
    xx, yy = grid
    rows, cols = _window(image.shape, cx, cy, rx, ry, edge + 1.0)
    coverage, _ = _ellipse(xx[:, cols], yy[rows, :], cx, cy, rx, ry, edge)
    _paint(image[rows, cols], opacity * coverage, colour)


def _gaussian_blur(image, sigma):
    """Separable Gaussian blur of an HxWx3 image (edge padding)."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2)).astype(np.float32)
    taps /= taps.sum()
    height, width = image.shape[:2]
    padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    rows = sum(weight * padded[i : i + height] for i, weight in enumerate(taps))
    padded = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(weight * padded[:, i : i + width] for i, weight in enumerate(taps))


def _blink_openness(plan, t):
    """1 = eyes open; a blink closes them over three frames."""
    for start, openness in ((t, 0.45), (t - 1, 0.05), (t - 2, 0.5)):
        if start in plan.blink_frames:
            return openness
    return 1.0


def face_geometry(person, plan, t, width, height):
    """Face ellipse centre and radii (cx, cy, rx, ry) at frame t; the whole head stays inside the frame."""
    base_rx = person.face_size * min(width, height)
    scale = 1.0 + plan.scale_amplitude * math.sin(plan.scale_freq * t + plan.scale_phase)
    rx = base_rx * scale
    ry = rx * person.face_aspect
    # Free room for the centre, computed at the largest scale; the hair cap reaches 1.1 rx to the sides
    # and 1.16 ry above the centre.
    largest_rx = base_rx * (1.0 + plan.scale_amplitude)
    room_x = max(0.0, width / 2.0 - 1.1 * largest_rx - 1.0)
    room_y = max(0.0, height / 2.0 - 1.17 * largest_rx * person.face_aspect - 1.0)
    offsets = []
    for axis, room in enumerate((room_x, room_y)):
        wave = 0.6 * math.sin(plan.path_freq[axis, 0] * t + plan.path_phase[axis, 0])
        wave += 0.4 * math.sin(plan.path_freq[axis, 1] * t + plan.path_phase[axis, 1])
        offsets.append(room * plan.path_amplitude[axis] * wave)
    return width / 2.0 + offsets[0], height / 2.0 + offsets[1], rx, ry


def face_box(geometry, width, height):
    """Ground-truth face box [x1, y1, x2, y2] (ints; x2, y2 exclusive, like frame[y1:y2, x1:x2])."""
    cx, cy, rx, ry = geometry
    return [
        max(0, int(math.floor(cx - rx))),
        max(0, int(math.floor(cy - ry))),
        min(width, int(math.ceil(cx + rx))),
        min(height, int(math.ceil(cy + ry))),
    ]


SCLERA = np.array([0.93, 0.91, 0.88], dtype=np.float32)
PUPIL = np.array([0.03, 0.03, 0.03], dtype=np.float32)
MOUTH_INSIDE = np.array([0.22, 0.06, 0.06], dtype=np.float32)


def _background(plan, t, grid):
    """A few drifting colour waves (smooth gradients and blobs), different per clip."""
    xx, yy = grid
    freq_x, freq_y, phase, amplitude, speed_x, speed_y = plan.background_waves.T
    # sin(a + b) = sin a cos b + cos a sin b: two small separable factors instead of a full-frame sin per wave.
    x_angle = freq_x * (xx[0, :, None] - speed_x * t)  # (W, K)
    y_angle = freq_y * (yy[:, 0, None] - speed_y * t) + phase  # (H, K)
    waves = np.sin(x_angle)[None] * np.cos(y_angle)[:, None] + np.cos(x_angle)[None] * np.sin(y_angle)[:, None]
    return plan.background_base + waves @ (amplitude[:, None] * plan.background_wave_colours)


def inner_face_ellipse(face, feature_x):
    """(cx, cy, rx, ry) of the inner face that a fake swaps, for the face ellipse and the features' centre x."""
    cx, cy, rx, ry = face
    return feature_x, cy + INNER_FACE_CENTER_DY * ry, INNER_FACE_RX * rx, INNER_FACE_RY * ry


def render_frame(person, plan, t, grid, frame_rng):
    """One float32 HxWx3 frame in [0, 1], its face ellipse and its inner-face ellipse, each (cx, cy, rx, ry).

    Coordinates are continuous pixel coordinates: pixel (row i, column j) covers [j, j+1) x [i, i+1).
    """
    xx, yy = grid
    height, width = yy.shape[0], xx.shape[1]
    image = _background(plan, t, grid).astype(np.float32)

    cx, cy, rx, ry = face_geometry(person, plan, t, width, height)
    # Features slide sideways a little with the head turn.
    feature_x = cx + plan.yaw_amplitude * rx * math.sin(plan.yaw_freq * t + plan.yaw_phase)

    # Hair: a slightly larger head ellipse, visible above the face and down the sides to the ears.
    rows, cols = _window(image.shape, cx, cy - 0.06 * ry, 1.1 * rx, 1.1 * ry, 2.0)
    head_x, head_y = xx[:, cols], yy[rows, :]
    head, _ = _ellipse(head_x, head_y, cx, cy - 0.06 * ry, 1.1 * rx, 1.1 * ry)
    above_ears = np.clip((cy - 0.05 * ry - head_y) / 2.0, 0.0, 1.0)
    _paint(image[rows, cols], head * above_ears, person.hair)

    # Skin below a curved hairline, shaded darker towards the rim and brighter on the lit side.
    face, face_radius = _ellipse(head_x, head_y, cx, cy, rx, ry)
    hairline = cy - 0.78 * ry + 0.34 * ry * ((head_x - cx) / rx) ** 2
    below_hairline = np.clip((head_y - hairline) / 1.5, 0.0, 1.0)
    shading = 1.0 - 0.22 * np.minimum(face_radius, 1.0) ** 2 + 0.06 * plan.light_side * (head_x - cx) / rx
    _paint(image[rows, cols], face * below_hairline, shading[..., None] * person.skin)

    # Eyes: a darker socket, then sclera, iris and pupil that close during a blink; eyebrows above.
    openness = _blink_openness(plan, t)
    eye_y = cy - 0.14 * ry
    eye_rx = person.eye_width * rx
    for side in (-1.0, 1.0):
        eye_x = feature_x + side * person.eye_spacing * rx
        _draw_ellipse(image, grid, eye_x, eye_y, 1.15 * eye_rx, 0.13 * ry, 0.75 * person.skin, opacity=0.6, edge=1.5)
        if openness > 0.1:
            eye_ry = max(0.5, 0.09 * ry * openness)
            rows, cols = _window(image.shape, eye_x, eye_y, eye_rx, eye_ry, 2.0)
            eye_xx, eye_yy = xx[:, cols], yy[rows, :]
            sclera, _ = _ellipse(eye_xx, eye_yy, eye_x, eye_y, eye_rx, eye_ry)
            _paint(image[rows, cols], sclera, SCLERA)
            iris_x = eye_x + plan.gaze[0] * eye_rx * 0.5
            iris_y = eye_y + plan.gaze[1] * 0.09 * ry * 0.5
            iris, _ = _ellipse(eye_xx, eye_yy, iris_x, iris_y, 0.5 * eye_rx, 0.5 * eye_rx)
            _paint(image[rows, cols], iris * sclera, person.iris)
            pupil, _ = _ellipse(eye_xx, eye_yy, iris_x, iris_y, 0.22 * eye_rx, 0.22 * eye_rx)
            _paint(image[rows, cols], pupil * sclera, PUPIL)
        else:
            _draw_ellipse(image, grid, eye_x, eye_y, eye_rx, max(0.6, 0.015 * ry), 0.45 * person.skin)
        brow_y = eye_y - person.brow_height * ry
        _draw_ellipse(image, grid, eye_x, brow_y, eye_rx, max(0.8, 0.035 * ry), 0.9 * person.hair)

    # Nose: a soft shadow down the middle and darker nostrils.
    nose_top = cy - 0.02 * ry
    nose_ry = 0.6 * person.nose_length * ry
    nose_x, nose_y = feature_x + 0.04 * rx, nose_top + nose_ry
    _draw_ellipse(image, grid, nose_x, nose_y, 0.08 * rx, nose_ry, 0.78 * person.skin, opacity=0.5, edge=3.0)
    nostrils_y = nose_top + person.nose_length * ry
    _draw_ellipse(image, grid, feature_x, nostrils_y, 0.12 * rx, 0.045 * ry, 0.6 * person.skin, opacity=0.7, edge=1.5)

    # Mouth: lips and a dark opening that moves like talking.
    talk = math.sin(plan.talk_freq[0] * t + plan.talk_phase[0])
    talk += 0.6 * math.sin(plan.talk_freq[1] * t + plan.talk_phase[1])
    mouth_open = min(1.0, max(0.0, 0.3 + 0.45 * talk))
    mouth_y = cy + 0.42 * ry
    mouth_rx = person.mouth_width * rx
    _draw_ellipse(image, grid, feature_x, mouth_y, mouth_rx, (0.05 + 0.08 * mouth_open) * ry, person.lips)
    opening_ry = max(0.5, (0.012 + 0.07 * mouth_open) * ry)
    _draw_ellipse(image, grid, feature_x, mouth_y, 0.8 * mouth_rx, opening_ry, MOUTH_INSIDE)

    inner_face = inner_face_ellipse((cx, cy, rx, ry), feature_x)
    if plan.fakery is not None:
        _swap_inner_face(image, plan.fakery, inner_face, grid, frame_rng)

    # Camera: slow brightness drift and sensor noise (a shared luma part plus per-channel chroma).
    image *= 1.0 + plan.gain_amplitude * math.sin(plan.gain_freq * t + plan.gain_phase)
    image += plan.noise_sigma * frame_rng.standard_normal((height, width, 1), dtype=np.float32)
    image += 0.5 * plan.noise_sigma * frame_rng.standard_normal((height, width, 3), dtype=np.float32)
    return image, (cx, cy, rx, ry), inner_face


def _swap_inner_face(image, fakery, inner_face, grid, frame_rng):
    """Blend a blurred, colour-shifted copy into the inner face (in place) with a sharp-ish mask and a seam ring."""
    xx, yy = grid
    inner_cx, inner_cy, inner_rx, inner_ry = inner_face
    # Per-frame flicker: the swapped face's blend weight and colour jitter a little.
    jitter = 1.0 + fakery.flicker * frame_rng.uniform(-1.0, 1.0)
    strength = min(1.0, fakery.strength * jitter)
    colour_shift = fakery.colour_shift * jitter + frame_rng.uniform(-0.012, 0.012, 3).astype(np.float32)
    rows, cols = _window(image.shape, inner_cx, inner_cy, inner_rx, inner_ry, 4.0)
    patch = image[rows, cols]
    swapped = _gaussian_blur(patch, fakery.blur_sigma) + colour_shift
    mask, radius = _ellipse(xx[:, cols], yy[rows, :], inner_cx, inner_cy, inner_rx, inner_ry, edge=1.2)
    _paint(patch, strength * mask, swapped)
    # The seam: a thin ring (about 1 px) of off brightness where the blend mask transitions.
    distance = (radius - 1.0) * min(inner_rx, inner_ry)
    patch += (fakery.seam_tint * np.exp(-0.5 * (distance / 0.8) ** 2))[..., None]


def render_clip(person, plan, frames, width, height, frame_rng):
    """Yield (uint8 HxWx3 RGB frame, face box, inner-face ellipse rounded to 0.01 px) for each frame."""
    xx = np.arange(width, dtype=np.float32)[None, :] + 0.5  # pixel centres
    yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
    for t in range(frames):
        image, face, inner_face = render_frame(person, plan, t, (xx, yy), frame_rng)
        pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        yield pixels, face_box(face, width, height), [round(float(value), 2) for value in inner_face]
