"""A small synthetic deepfake video dataset: the built-in default for demos, tests and smoke runs.

Layout (what the ``folder`` dataset indexer reads; the first subfolder is the leakage group)::

    OUT/real/p0000/c0.mp4   OUT/fake/p0000/c0.mp4   OUT/real/p0001/c0.mp4   ...
    OUT/synth.json

synth.json holds the generation parameters and, per file (relative path): label, person, frames, fps,
width, height, codec, bytes, ``boxes`` (the ground-truth face box per frame, [x1, y1, x2, y2] ints, x2/y2
exclusive) and ``inner_faces`` (per frame [cx, cy, rx, ry], the ellipse a fake swaps; the same region in a
real clip). It is written first with ``"complete": false`` and only the planned files, and rewritten with
``"complete": true`` and everything else once all videos exist.

Every clip shows a face-like head (skin ellipse, hair cap, blinking eyes, eyebrows, nose shading, a
talking mouth) moving smoothly over a drifting textured background, with brightness drift and sensor
noise. A real and a fake clip of one person share the identity (skin tone, face shape, eye spacing...)
but not the motion or background. A fake replaces the inner face with a blurred, colour-shifted copy
blended in with a sharp-ish mask, which leaves a seam ring; the blend strength and colour flicker a
little from frame to frame. That is the signal a small CNN has to learn.

Frames are rendered with numpy (vectorised per frame) and encoded with PyAV: h264 (libx264, .mp4) or
vp9 (libvpx-vp9, .webm). The same arguments give byte-identical files on the same machine.
"""

import glob
import math
import os
import sys
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from tqdm import tqdm

from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, write_json

SYNTH_FORMAT = "dfdtrain-synth"
SYNTH_VERSION = 1
METADATA_NAME = "synth.json"
LABELS = ("real", "fake")

# codec name -> (encoder, file extension, container format, encoder options).
# threads=1: frames this small gain little from encoder threads, and the output cannot depend on the core count.
CODECS = {
    "h264": (
        "libx264",
        ".mp4",
        "mp4",
        # scenecut=0: keyframes exactly every `gop` frames, so decoders can seek by GOP.
        # mbtree=0: with macroblock-tree rate control, libx264 gave different bytes (and pixels) for the
        # same frames in different processes at most frame sizes; without it the output is byte-identical
        # (checked across processes and sizes). B-frames stay on.
        {"crf": "20", "preset": "veryfast", "threads": "1", "x264-params": "scenecut=0:mbtree=0"},
    ),
    "vp9": (
        "libvpx-vp9",
        ".webm",
        "webm",
        # realtime/cpu-used 8: about 4x faster than "good" at the same quality for frames this small.
        {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1", "row-mt": "0"},
    ),
}

# The inner face that a fake swaps, in units of the face ellipse radii (rx, ry): centred on the features
# (which slide sideways with the head turn), it covers eyes, eyebrows, nose and mouth but stays inside the
# skin (below the hairline, above the chin), so its seam ring runs over plain cheek skin.
INNER_FACE_CENTER_DY = 0.08
INNER_FACE_RX = 0.64
INNER_FACE_RY = 0.68


# ---------------------------------------------------------------------------------------------------
# Identities and clip plans: everything random about a clip except the per-frame sensor noise and flicker


@dataclass(frozen=True)
class Person:
    """What stays the same across a person's clips (real and fake)."""

    skin: np.ndarray  # RGB in [0, 1]
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    face_size: float  # face ellipse rx as a fraction of min(width, height)
    face_aspect: float  # ry / rx
    eye_spacing: float  # eye centre distance from the face centre line, in rx
    eye_width: float  # in rx
    mouth_width: float  # in rx
    nose_length: float  # in ry
    brow_height: float  # eyebrow distance above the eye, in ry


# Skin tones from light to dark; a person gets one of them with a little jitter.
SKIN_TONES = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.91, 0.72, 0.58],
        [0.82, 0.62, 0.47],
        [0.70, 0.50, 0.36],
        [0.55, 0.38, 0.26],
        [0.42, 0.28, 0.19],
    ],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.30, 0.15], [0.75, 0.62, 0.38], [0.50, 0.20, 0.10],
     [0.55, 0.55, 0.55]],
    dtype=np.float32,
)
IRIS_COLOURS = np.array(
    [[0.30, 0.18, 0.08], [0.20, 0.35, 0.60], [0.25, 0.45, 0.25], [0.15, 0.10, 0.07]], dtype=np.float32
)
LIP_TINT = np.array([0.85, 0.55, 0.55], dtype=np.float32)  # lips: the skin, redder and darker
LIP_RED = np.array([0.08, 0.0, 0.0], dtype=np.float32)


def make_person(rng):
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    lips = np.clip(skin * LIP_TINT + LIP_RED, 0, 1)
    return Person(
        skin=np.clip(skin, 0, 1),
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.uniform(-0.03, 0.03, 3).astype(np.float32),
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        lips=lips,
        face_size=float(rng.uniform(0.19, 0.24)),
        face_aspect=float(rng.uniform(1.18, 1.34)),
        eye_spacing=float(rng.uniform(0.28, 0.32)),
        eye_width=float(rng.uniform(0.12, 0.15)),
        mouth_width=float(rng.uniform(0.24, 0.30)),
        nose_length=float(rng.uniform(0.15, 0.22)),
        brow_height=float(rng.uniform(0.10, 0.13)),
    )


@dataclass(frozen=True)
class Fakery:
    """How a fake clip's inner face is swapped in."""

    colour_shift: np.ndarray  # RGB offset of the swapped-in face
    blur_sigma: float  # the swapped face is softer than the rest of the frame
    strength: float  # blend weight inside the inner ellipse
    seam_tint: float  # brightness of the thin ring where the blend mask transitions (+ or -)
    flicker: float  # per-frame relative jitter of strength and colour shift


@dataclass(frozen=True)
class ClipPlan:
    """Motion, background and camera of one clip; `fakery` is None for a real clip."""

    background_base: np.ndarray  # RGB
    background_waves: np.ndarray  # (K, 6): fx, fy, phase, amplitude, speed_x, speed_y
    background_wave_colours: np.ndarray  # (K, 3)
    path_amplitude: np.ndarray  # (2,) x and y, as fractions of the free room around the face
    path_freq: np.ndarray  # (2, 2) radians per frame, two sines per axis
    path_phase: np.ndarray  # (2, 2)
    scale_amplitude: float
    scale_freq: float
    scale_phase: float
    yaw_amplitude: float  # features slide sideways inside the face (a hint of head turn)
    yaw_freq: float
    yaw_phase: float
    blink_frames: frozenset  # frames where a blink starts
    talk_freq: np.ndarray  # (2,)
    talk_phase: np.ndarray  # (2,)
    gaze: np.ndarray  # (2,) iris offset in eye radii
    light_side: float  # -1..1: which cheek is brighter
    gain_amplitude: float
    gain_freq: float
    gain_phase: float
    noise_sigma: float
    fakery: "Fakery | None"


def make_clip_plan(rng, frames, person, fake):
    waves = 5
    freqs = rng.uniform(0.02, 0.16, (waves, 2)) * rng.choice([-1, 1], (waves, 2))
    background_waves = np.column_stack(
        [
            freqs,
            rng.uniform(0, 2 * np.pi, waves),
            rng.uniform(0.04, 0.12, waves),
            rng.uniform(-0.6, 0.6, (waves, 2)),  # drift in pixels per frame
        ]
    ).astype(np.float32)
    blink_frames = set()
    next_blink = int(rng.integers(0, 12))
    while next_blink < frames:
        blink_frames.add(next_blink)
        next_blink += int(rng.integers(10, 30))
    fakery = None
    if fake:
        # The swapped face's tone: always a change of hue (a shift orthogonal to the skin colour, which
        # shading alone never produces), plus a little lighter or darker; relative to the skin's
        # brightness, so the mismatch is about as visible on dark skin as on light skin.
        skin_norm = float(np.linalg.norm(person.skin))
        skin_direction = person.skin / skin_norm
        hue_shift = rng.normal(size=3)
        hue_shift -= hue_shift.dot(skin_direction) * skin_direction
        hue_shift /= np.linalg.norm(hue_shift)
        colour_shift = skin_norm * (hue_shift * rng.uniform(0.05, 0.07) + skin_direction * rng.uniform(-0.03, 0.03))
        fakery = Fakery(
            colour_shift=colour_shift.astype(np.float32),
            blur_sigma=float(rng.uniform(0.9, 1.4)),
            strength=float(rng.uniform(0.8, 0.95)),
            seam_tint=float(rng.choice([-1, 1]) * rng.uniform(0.035, 0.06)),
            flicker=float(rng.uniform(0.08, 0.15)),
        )
    return ClipPlan(
        background_base=rng.uniform(0.2, 0.75, 3).astype(np.float32),
        background_waves=background_waves,
        background_wave_colours=rng.uniform(-1, 1, (waves, 3)).astype(np.float32),
        path_amplitude=rng.uniform(0.4, 1.0, 2),
        path_freq=2 * np.pi / rng.uniform(18, 60, (2, 2)),
        path_phase=rng.uniform(0, 2 * np.pi, (2, 2)),
        scale_amplitude=float(rng.uniform(0.03, 0.08)),
        scale_freq=float(2 * np.pi / rng.uniform(20, 60)),
        scale_phase=float(rng.uniform(0, 2 * np.pi)),
        yaw_amplitude=float(rng.uniform(0.0, 0.06)),
        yaw_freq=float(2 * np.pi / rng.uniform(20, 50)),
        yaw_phase=float(rng.uniform(0, 2 * np.pi)),
        blink_frames=frozenset(blink_frames),
        talk_freq=2 * np.pi / rng.uniform(4, 10, 2),
        talk_phase=rng.uniform(0, 2 * np.pi, 2),
        gaze=rng.uniform(-0.3, 0.3, 2),
        light_side=float(rng.uniform(-1, 1)),
        gain_amplitude=float(rng.uniform(0.02, 0.06)),
        gain_freq=float(2 * np.pi / rng.uniform(20, 80)),
        gain_phase=float(rng.uniform(0, 2 * np.pi)),
        noise_sigma=float(rng.uniform(0.008, 0.02)),
        fakery=fakery,
    )


# ---------------------------------------------------------------------------------------------------
# Rendering (float32 RGB in [0, 1], one frame at a time, vectorised over pixels)


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


# ---------------------------------------------------------------------------------------------------
# Encoding


def encode_video(path, frames_rgb, codec, width, height, fps, gop):
    """Encode an iterable of uint8 RGB frames; written to a temp file beside `path`, then renamed.

    A crash leaves the old file or none, never a half-written video.
    """
    encoder, _, container_format, options = CODECS[codec]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A hidden temp name in the same folder (so the rename is atomic), created with normal permissions.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    time_base = Fraction(1, fps)
    # bitexact: no random segment UIDs (webm) or version strings, so equal inputs give equal bytes.
    container_options = {"fflags": "+bitexact"}
    if container_format == "mp4":
        container_options["video_track_timescale"] = str(fps)  # time_base 1/fps: pts = frame index
    try:
        with av.open(tmp, "w", format=container_format, options=container_options) as container:
            stream = container.add_stream(encoder, rate=fps, options={**options, "g": str(gop)})
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
            for index, rgb in enumerate(frames_rgb):
                # BT.601 limited range, the swscale default that decoders assume for untagged video.
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts = index
                frame.time_base = time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------------
# The dataset


def _check_parameters(count, frames, width, height, fps, codec, gop):
    for name, value, least in (("count", count, 2), ("frames", frames, 1), ("fps", fps, 1), ("gop", gop, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise DfdError(f"{name}: must be an integer >= {least} (got {value!r})")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DfdError(f"{name}: must be a positive integer (got {value!r})")
        if value % 2:
            raise DfdError(f"{name}: must be even for yuv420p video (got {value})")
        if value < 16:
            raise DfdError(f"{name}: must be at least 16 pixels to draw a face (got {value})")
    if codec not in CODECS:
        raise DfdError(f"codec: unknown codec {codec!r} (known: {', '.join(CODECS)})")


def planned_files(count, codec):
    """[(relative path, label, person, person index)] in generation order: real, fake, real, fake, ..."""
    extension = CODECS[codec][1]
    files = []
    for index in range(count):
        person_index, label = divmod(index, 2)
        person = f"p{person_index:04d}"
        files.append((f"{LABELS[label]}/{person}/c0{extension}", LABELS[label], person, person_index))
    return files


def _prepare_out_dir(out_dir, params, files):
    """Refuse a folder that is not ours; drop files of an earlier synth run that this run will not write.

    Then write a provisional synth.json (complete: false) first, so a crashed run still marks the
    folder as a synth dataset and lists what it was writing.
    """
    metadata_path = os.path.join(out_dir, METADATA_NAME)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DfdError(f"{out_dir}: not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(metadata_path):
            raise DfdError(
                f"{out_dir}: not empty and has no {METADATA_NAME}; refusing to write a synthetic dataset into it"
            )
        try:
            previous = read_json(metadata_path)
            previous_files = [name for name in previous.get("files", {}) if isinstance(name, str)]
        except (ValueError, AttributeError) as error:
            raise DfdError(f"{metadata_path}: not a synth metadata file ({error})") from None
        keep = {relative for relative, *_ in files}
        for relative in previous_files:
            parts = relative.split("/")
            # Only videos this generator writes (LABEL/PERSON/NAME), never anything outside the folder.
            if relative in keep or len(parts) != 3 or parts[0] not in LABELS or ".." in parts:
                continue
            path = os.path.join(out_dir, *parts)
            if os.path.isfile(path):
                os.unlink(path)
                try:
                    os.rmdir(os.path.dirname(path))  # the person folder, if now empty
                except OSError:
                    pass
    # Temp files a killed run left behind (encode_video's ".NAME.PID.tmp").
    for relative, *_ in files:
        folder, name = os.path.split(os.path.join(out_dir, *relative.split("/")))
        for leftover in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
            os.unlink(leftover)
    provisional = {
        "format": SYNTH_FORMAT,
        "version": SYNTH_VERSION,
        "complete": False,
        "params": params,
        "files": {relative: {"label": label, "person": person} for relative, label, person, _ in files},
    }
    write_json(metadata_path, provisional)


def synthesize(
    out_dir, count=40, frames=24, width=128, height=128, fps=12, codec="h264", seed=0, gop=12, progress=True
):
    """Generate the synthetic dataset into `out_dir` and return a summary dict.

    persons = ceil(count / 2); person i has real/p{i:04d}/c0.* and (while count allows) fake/p{i:04d}/c0.*.
    """
    _check_parameters(count, frames, width, height, fps, codec, gop)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DfdError(f"seed: must be a non-negative integer (got {seed!r})")
    started = time.perf_counter()
    out_dir = os.fspath(out_dir)
    params = {
        "count": count, "frames": frames, "width": width, "height": height,
        "fps": fps, "codec": codec, "seed": seed, "gop": gop,
    }
    files = planned_files(count, codec)
    _prepare_out_dir(out_dir, params, files)

    metadata_files = {}
    counts = {label: 0 for label in LABELS}
    total_bytes = 0
    bar = tqdm(files, desc="synth", unit="video", file=sys.stderr, disable=not progress)
    for relative, label, person_name, person_index in bar:
        # Independent streams per person and per clip, so a clip does not depend on count or order.
        person = make_person(np.random.default_rng([seed, person_index, 0]))
        clip_rng = np.random.default_rng([seed, person_index, 1 + LABELS.index(label)])
        plan = make_clip_plan(clip_rng, frames, person, fake=(label == "fake"))
        boxes, inner_faces = [], []

        def frames_with_boxes():
            for pixels, box, inner_face in render_clip(person, plan, frames, width, height, clip_rng):
                boxes.append(box)
                inner_faces.append(inner_face)
                yield pixels

        path = os.path.join(out_dir, *relative.split("/"))
        encode_video(path, frames_with_boxes(), codec, width, height, fps, gop)
        size = os.path.getsize(path)
        total_bytes += size
        counts[label] += 1
        metadata_files[relative] = {
            "label": label,
            "person": person_name,
            "frames": frames,
            "fps": fps,
            "width": width,
            "height": height,
            "codec": codec,
            "bytes": size,
            "boxes": boxes,
            "inner_faces": inner_faces,
        }

    write_json(
        os.path.join(out_dir, METADATA_NAME),
        {
            "format": SYNTH_FORMAT,
            "version": SYNTH_VERSION,
            "complete": True,
            "params": params,
            "box_format": "boxes: [x1, y1, x2, y2] per frame, face ellipse bounds in pixels, x2 and y2 exclusive",
            "inner_face_format": (
                "inner_faces: [cx, cy, rx, ry] per frame, the ellipse a fake swaps (the same region in a real"
                " clip), in continuous pixel coordinates (pixel column j spans [j, j+1))"
            ),
            "files": metadata_files,
        },
    )
    return {
        "out_dir": out_dir,
        "videos": len(files),
        "persons": math.ceil(count / 2),
        "counts": counts,
        "total_bytes": total_bytes,
        "seconds": round(time.perf_counter() - started, 3),
        "params": params,
    }
