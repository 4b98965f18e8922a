"""shard --store faces --landmarks dlib68 on real FF++ videos: 68 points on every stored frame of every kept track,
on the face and where the stored clip shows it; index.json names the model and its versions; parts made with and
without landmarks are refused in one line; the helpers the synthesis uses."""

import json
import shutil
from importlib.metadata import version

import av
import numpy as np
import pytest
import webdataset as wds

from support import no_face_clip, run_cli
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json
from dfdtrain.data.faces.clip_options import FaceClipOptions
from dfdtrain.data.faces.landmarks import (face_box, landmark_model, landmarks_available, missing_landmarks_line,
                                          track_points, window_to_clip)
from dfdtrain.data.faces.tracks import TrackOptions
from dfdtrain.data.shards.parts import Part, merge_parts
from dfdtrain.data.shards.summary import format_index
from dfdtrain.data.shards.writer import write_shards

pytest.importorskip("facenet_pytorch")
pytest.importorskip("dlib")

YOUTUBE = "ffpp/original_sequences/youtube/c40/videos"
SIZE = 128
EYES, MOUTH = slice(36, 48), slice(48, 68)


def row(key, root, path, label, group, split="train"):
    return {"key": key, "path": path, "root": str(root), "label": label, "dataset": "test", "group": group,
            "split": split}


@pytest.fixture(scope="module")
def landmark_shards(tmp_path_factory, fixtures):
    """Face-clip shards with landmarks of two real FF++ clips (585 has two people: two tracks)."""
    root = tmp_path_factory.mktemp("landmarks")
    rows = [row("real469", fixtures, f"{YOUTUBE}/469.mp4", 0, "469"),
            row("real585", fixtures, f"{YOUTUBE}/585.mp4", 1, "585")]
    options = FaceClipOptions(size=SIZE, landmarks="dlib68", tracks=TrackOptions(detect_every=10, max_tracks=2))
    index = write_shards(rows, root / "shards", progress=False, store="faces", face_clip_options=options)
    samples = {sample["__key__"]: sample for sample in
               wds.WebDataset(sorted(str(path) for path in (root / "shards").glob("*.tar")), shardshuffle=False)}
    return root / "shards", index, samples, options


def tracks_of(samples):
    for key, sample in sorted(samples.items()):
        meta = json.loads(sample["json"])
        for number, track in enumerate(meta["tracks"]):
            yield key, meta, number, track, sample[track["member"]], track_points(sample, track)


def test_every_stored_frame_has_68_points_on_the_face(landmark_shards):
    _, _, samples, options = landmark_shards
    assert sorted(samples) == ["real469", "real585"]
    assert len(json.loads(samples["real585"]["json"])["tracks"]) == 2
    # the face inside the stored crop: the window is the face grown by margin per side, centred
    half = SIZE / (1 + 2 * options.tracks.margin) / 2
    for key, meta, number, track, _, points in tracks_of(samples):
        # in the sample's landmarks.npz, not its json: every kept frame has its 68 points
        assert track["landmarks"] == {"member": "landmarks.npz", "array": str(track["id"]), "frames": track["frames"]}
        assert points.dtype == np.float32 and points.shape == (track["frames"], 68, 2), (key, number)
        assert np.isfinite(points).all() and (points == points.round()).all()  # dlib's whole pixels
        assert len(samples[key]["landmarks.npz"]) < 160 * sum(t["frames"] for t in meta["tracks"])  # < 0.16 KB/frame
        mean = points.mean(axis=1)
        assert (np.abs(mean - SIZE / 2) < half).all(), (key, number, np.abs(mean - SIZE / 2).max())
        eyes, mouth = points[:, EYES, 1].mean(axis=1), points[:, MOUTH, 1].mean(axis=1)
        assert (eyes < mouth).all(), (key, number)  # image y grows downwards
        assert (points >= -0.5).all() and (points <= SIZE - 0.5).all(), (key, number)


def test_points_line_up_with_the_stored_clip(landmark_shards):
    """In the stored clip's pixels: MTCNN's eyes (source pixels, mapped through the track's window) fall on dlib's
    eyes, and dlib run on the decoded clip's own frames finds about the same points. On each video's best track:
    585's second person is small, dark and turned, and dlib loses that face (its landmark_offset says so)."""
    _, _, samples, options = landmark_shards
    model = landmark_model("dlib68")
    offsets = {(key, number): track["landmark_offset"] for key, _, number, track, _, _ in tracks_of(samples)}
    assert offsets[("real469", 0)] < 0.05 and offsets[("real585", 0)] < 0.05 and offsets[("real585", 1)] > 0, offsets
    for key, _, number, track, clip, points in tracks_of(samples):
        if number:
            continue
        first = track["source_frames"][0]
        distances = []
        for detection in track["detections"]:
            position = detection[0] - first
            if len(detection) < 16 or not 0 <= position < track["frames"]:
                continue
            x1, y1, x2, _ = track["windows"][position]
            mtcnn_eyes = sorted(window_to_clip(np.asarray(detection[6:10]).reshape(2, 2) - (x1, y1), x2 - x1, SIZE)
                                .tolist())
            dlib_eyes = sorted([points[position, 36:42].mean(axis=0).tolist(),
                                points[position, 42:48].mean(axis=0).tolist()])
            distances.append(np.linalg.norm(np.subtract(mtcnn_eyes, dlib_eyes), axis=1).max())
        assert distances and np.median(distances) < 0.03 * SIZE and max(distances) < 0.06 * SIZE, (key, distances)
        with av.open(__import__("io").BytesIO(clip)) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(decoded) == track["frames"]
        for position in range(0, track["frames"], max(1, track["frames"] // 8)):
            again = np.asarray(model(decoded[position], face_box(SIZE, options.tracks.margin)), dtype=float)
            assert np.abs(again - points[position]).mean() < 0.03 * SIZE, (key, number, position)


def test_index_records_the_model_and_its_versions(landmark_shards, tmp_path):
    shards, index, _, _ = landmark_shards
    expected = {"model": "dlib68", "points": 68, "coordinates": "clip", "member": "landmarks.npz",
                "version": {"dlib": __import__("dlib").__version__,
                            "face_recognition_models": version("face-recognition-models")}}
    assert index["landmarks"] == expected == read_json(shards / "index.json")["landmarks"]
    assert index["options"]["landmarks"] == expected and "landmarks" not in index["options"]["face_clips"]
    assert index["totals"]["stage_seconds"]["landmarks"] > 0
    assert "landmarks: dlib68, 68 points per stored frame" in format_index(index)
    # the synthesis' check: these shards have them, shards made without do not, and the refusal names the option
    assert landmarks_available(index)
    assert not landmarks_available({"store": "faces", "options": {}}) and not landmarks_available(None)
    line = missing_landmarks_line(tmp_path / "index.json", "the sbi synthesis")
    assert "\n" not in line and "--landmarks dlib68" in line and str(tmp_path) in line


def test_parts_with_and_without_landmarks_are_refused_in_one_line(tmp_path):
    """Two face-less clips, one shard each: part 0 with landmarks, part 1 without is refused beside it, and a
    merge of such parts (made in two folders, put together) is refused too."""
    rows = []
    for name, frames in (("plain", 30), ("plain2", 24)):
        no_face_clip(tmp_path / f"{name}.mp4", frames=frames)
        rows.append(row(name, tmp_path, f"{name}.mp4", 0, name))
    marked = FaceClipOptions(size=64, landmarks="dlib68")
    unmarked = FaceClipOptions(size=64)
    common = dict(target_bytes=1, progress=False, store="faces")
    record = write_shards(rows, tmp_path / "a", part=Part(0, 2), face_clip_options=marked, **common)
    with pytest.raises(DfdError) as refused:
        write_shards(rows, tmp_path / "a", part=Part(1, 2), face_clip_options=unmarked, **common)
    message = str(refused.value)
    assert "\n" not in message and "different landmark settings" in message and "--landmarks dlib68" in message
    other = write_shards(rows, tmp_path / "b", part=Part(1, 2), face_clip_options=unmarked, **common)
    for name in other["shards"]:
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
        shutil.copy(tmp_path / "b/.parts" / f"{name}.json", tmp_path / "a/.parts" / f"{name}.json")
    shutil.copy(tmp_path / "b/.parts/part-00001-of-00002.json", tmp_path / "a/.parts")
    with pytest.raises(DfdError) as refused:
        merge_parts(tmp_path / "a")
    message = str(refused.value)
    assert "\n" not in message and "cannot merge" in message and "part(s) 1 with no --landmarks" in message
    assert "part(s) 0 with --landmarks dlib68" in message
    # a face-less clip's centre track has no landmarks: a NaN row per frame
    for sample in wds.WebDataset([str(tmp_path / "a" / name) for name in record["shards"]], shardshuffle=False):
        track = json.loads(sample["json"])["tracks"][0]
        assert json.loads(sample["json"])["no_face"] and track["landmarks"]["frames"] == 0
        points = track_points(sample, track)
        assert points.shape == (track["frames"], 68, 2) and np.isnan(points).all()


def test_cli_refuses_landmarks_without_face_clips(tmp_path):
    result = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "out", "--landmarks", "dlib68")
    assert result.returncode == 2 and "--store faces" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
