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
"""

from dfdtrain.data.perturb import PERTURBATIONS, parse_perturbation, perturbation_rng


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
