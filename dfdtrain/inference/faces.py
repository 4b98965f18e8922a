"""How inference finds the faces of a video: the one list of ``faces`` values (``predict --faces``, ``serve
--faces``, ``preview --faces``, ``Predictor(faces=...)``). A value is a registered face detector's name
(dfdtrain.data.faces.detect.FACE_DETECTORS: faces detected on the sampled frames, crops grown by the training
margin) or ``none`` (the training crop without boxes); ``face_modes(first)`` lists them with an option's default
first, as its --help and its errors show them.
"""

from dfdtrain.data.faces.detect import FACE_DETECTORS

NO_FACES = "none"
DEFAULT_FACES = "mtcnn"
FACES_HELP = "mtcnn: detect faces and crop as in training (default); none: the crop without boxes"


def face_modes(first=DEFAULT_FACES):
    """Every ``faces`` value, ``first`` first: the registered face detectors (by name), then ``none``."""
    modes = (*FACE_DETECTORS.names(), NO_FACES)
    return (first, *[mode for mode in modes if mode != first])
