"""Robustness perturbations (issue 35): DeeperForensics-1.0's seven distortion types at their five levels, plus
``resize``. ``frames`` holds the registry and the seven frame types, ``video`` the ``h264`` re-encode of a source
video's bytes; importing this package registers all eight names in ``PERTURBATIONS``."""

from dfdtrain.data.perturb.frames import (LEVEL_PARAMETERS, LEVELS, PERTURBATIONS, TYPES, Perturbation,
                                          parse_perturbation, perturbation_rng)
from dfdtrain.data.perturb.video import perturb_video_bytes, reencode_h264

__all__ = ["LEVEL_PARAMETERS", "LEVELS", "PERTURBATIONS", "TYPES", "Perturbation", "parse_perturbation",
           "perturbation_rng", "perturb_video_bytes", "reencode_h264"]
