"""Identities and clip plans of the synthetic dataset: everything random about a clip except the per-frame
sensor noise and flicker.

A ``Person`` is what stays the same across a person's real and fake clips (skin tone, face shape, eye spacing...);
a ``ClipPlan`` is one clip's motion, background and camera, with a ``Fakery`` (how the inner face is swapped in)
for a fake. Both are drawn from a numpy Generator, so one seed gives one dataset.
"""

from dataclasses import dataclass

import numpy as np


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
