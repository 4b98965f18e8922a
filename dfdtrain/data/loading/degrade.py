"""Degrading a sample before the model sees it: one robustness perturbation in evaluation (``evaluate --perturb
TYPE:LEVEL``, the protocol's robustness suite), random codec / perturbation augmentation in training.

A degradation is an object with two hooks that ``stages.ClipDecoder`` calls in the loader's workers:
``source(key, data, rng)`` on the video member's bytes before anything is decoded (an ``h264`` re-encode: the
path a shared video takes, so the decoder, and a face detector at predict time, see it), and ``frames(key,
frames, rng)`` on the sampled, decoded frames uint8 [n,H,W,3] before the crop (``clips.make_clip``'s
``degrade_frames``: the whole decoded frame, as DeeperForensics perturbs whole frames; a face-clip sample's frames
are its stored face clip). ``key`` is the sample's key, ``rng`` the worker's numpy Generator (None in
evaluation). Each hook returns what it was given when it has nothing to do.

``FixedPerturbation("jpeg:3")``: ``dfdtrain.data.perturb``'s type at that level on every video, seeded per (video,
type, level) (``perturbation_rng``), so every evaluation of a video under a condition sees the same frames.

``RandomDegradation(data.augment)``: training's, on the sampled frames only (``source`` passes the bytes through):
with probability ``codec`` the clip's frames re-encoded by libx264 at a CRF drawn from ``codec_crf`` after a
downscale drawn from ``codec_downscale`` (``perturb.video.encode_frames_h264``: the sampled frames, not the whole
source file, so a 16-frame clip costs one short encode), then with probability ``perturb`` one type drawn from
``perturb_types`` at a level drawn from ``perturb_levels``. Its draws come from a child of the worker's generator
(``rng.spawn``), which leaves the worker's own stream where it was: turning them on or changing their shares
changes no clip's frame sampling, and the same seed, epoch, rank and ``data.num_workers`` make the same choices.
``training_degradation(augment)`` is what a training loader uses: one, or None when nothing is asked for.
"""

import numpy as np

from dfdtrain.data.perturb import PERTURBATIONS, parse_perturbation, perturbation_rng
from dfdtrain.data.perturb.video import encode_frames_h264


class FixedPerturbation:
    """One perturbation type at one level for every video (see the module's docstring); ``spec`` "TYPE:LEVEL"."""

    def __init__(self, spec, seed=0):
        self.type, self.level = parse_perturbation(spec)
        self.perturbation, self.seed = PERTURBATIONS.get(self.type), seed

    @property
    def spec(self):
        return f"{self.type}:{self.level}"

    def source(self, key, data, rng):
        if self.perturbation.stage != "video" or self.level == 0:
            return data
        return self.perturbation.apply(data, self.level, name=str(key))

    def frames(self, key, frames, rng):
        if self.perturbation.stage != "frames" or self.level == 0:
            return frames
        return self.perturbation.apply(frames, self.level, perturbation_rng(key, self.type, self.level, self.seed))


def training_degradation(augment):
    """The RandomDegradation an ``AugmentConfig`` asks for (enabled, and codec or perturb above 0), else None."""
    if augment is None or not augment.enabled or not (augment.codec > 0 or augment.perturb > 0):
        return None
    return RandomDegradation(augment)


class RandomDegradation:
    """Training's codec / perturbation augmentation (see the module's docstring); plain values only: picklable."""

    def __init__(self, augment):
        self.codec, self.crf = float(augment.codec), tuple(int(value) for value in augment.codec_crf)
        self.downscale = tuple(float(value) for value in augment.codec_downscale)
        self.perturb, self.types = float(augment.perturb), tuple(augment.perturb_types)
        self.levels = tuple(int(value) for value in augment.perturb_levels)
        for name in self.types:  # the config checked the names; a frames-stage type of the registry
            if PERTURBATIONS.get(name).stage != "frames":
                raise ValueError(f"perturbation {name!r} is not a frame perturbation")

    def choose(self, rng):
        """The draws for one clip from ``rng``: {"codec": (crf, scale)} and / or {"perturb": (type, level)}."""
        codec_draw, crf, scale, perturb_draw, pick, level = (
            rng.random(), rng.integers(self.crf[0], self.crf[1], endpoint=True), rng.uniform(*self.downscale),
            rng.random(), rng.integers(len(self.types)) if self.types else 0,
            rng.integers(self.levels[0], self.levels[1], endpoint=True))  # always all six: stable streams
        chosen = {}
        if codec_draw < self.codec:
            chosen["codec"] = (int(crf), float(scale))
        if perturb_draw < self.perturb and self.types:
            chosen["perturb"] = (self.types[int(pick)], int(level))
        return chosen

    def source(self, key, data, rng):
        return data

    def frames(self, key, frames, rng):
        if rng is None:  # evaluation: never augmented
            return frames
        child = _child(rng)
        chosen = self.choose(child)
        if "codec" in chosen:
            crf, scale = chosen["codec"]
            frames = encode_frames_h264(frames, crf, scale=scale)
        if "perturb" in chosen:
            name, level = chosen["perturb"]
            frames = PERTURBATIONS.get(name).apply(frames, level, child)
        return frames


def _child(rng):
    """A generator of its own from ``rng``: spawned from its SeedSequence (``rng``'s stream untouched), or, for a
    generator made without one, seeded by one draw of it."""
    if getattr(rng.bit_generator, "seed_seq", None) is not None:
        return rng.spawn(1)[0]
    return np.random.default_rng(int(rng.integers(2 ** 63)))
