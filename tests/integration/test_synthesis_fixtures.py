"""The blending synthesis on a real face: frames of an FF++ fixture video, dlib's 68 landmarks (dlib-bin and the
predictor file of face-recognition-models; skipped when they are not installed), a face crop as the loader makes
one. The mask must lie on the face and the fake differ from the real frame only where the mask is."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dfdtrain.data.decode.video import read_frames
from dfdtrain.data.faces.crops import crop_and_resize
from dfdtrain.data.loading.synthesis import SYNTHESES, landmarks_in_clip, synthesis_rng
from tests.support import SMALL_CLIP

dlib = pytest.importorskip("dlib", reason="dlib is not installed (dlib-bin)")


def predictor_path():
    spec = importlib.util.find_spec("face_recognition_models")  # found without importing it (it needs pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-recognition-models (dlib's 68-point predictor) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.exists():
        pytest.skip(f"no predictor file at {path}")
    return str(path)


def test_the_mask_lies_on_a_real_face(fixtures):
    frames = np.asarray(read_frames(str(SMALL_CLIP), [0, 8, 16, 24]))
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path())
    boxes, points = [], []
    for frame in frames:
        faces = detector(frame, 1)
        assert faces, "no face found on a fixture frame"
        face = max(faces, key=lambda box: box.area())
        shape = predictor(frame, face)
        boxes.append([face.left(), face.top(), face.right(), face.bottom()])
        points.append([[shape.part(i).x, shape.part(i).y] for i in range(68)])
    boxes, points = np.array(boxes, dtype=float), np.array(points, dtype=float)
    side = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    regions = np.concatenate([centre - side * 5 / 6, centre + side * 5 / 6], 1)  # the box + 1/3 per side, square
    clip = crop_and_resize(torch.from_numpy(frames), regions, 224).numpy()
    landmarks = landmarks_in_clip(points, regions, 224)
    face_box = np.stack([landmarks.min(1), landmarks.max(1)], 1)  # [T,2,2] the landmarks' extent in the clip
    for method in ("sbi", "vb"):
        result = SYNTHESES.get(method)(clip, landmarks, synthesis_rng(0, 0, 0, method))
        assert result.blended.all()
        changed = (result.frames != clip).any(-1)
        assert changed.any() and not (changed & (result.mask == 0)).any()
        ys, xs = np.mgrid[0:224, 0:224]
        for t in range(len(clip)):
            weight = result.mask[t]
            centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
            (x0, y0), (x1, y1) = face_box[t]
            assert x0 < centroid[0] < x1 and y0 < centroid[1] < y1  # on the face
            margin = result.reach[t] + 0.1 * (x1 - x0)
            inside = (xs > x0 - margin) & (xs < x1 + margin) & (ys > y0 - 0.35 * (y1 - y0)) & (ys < y1 + margin)
            assert weight[~inside].sum() == 0  # none of it beyond the face (the forehead allowed for `extended`)
