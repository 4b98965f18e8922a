"""dfdtrain synth: the built-in synthetic dataset, encoded and decoded for real with PyAV."""

import hashlib
import json
import math
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from dfdtrain.demo.synth import synthesize
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json
from support import REPO

# Small but big enough that the face has a few pixels of cheek around the swapped inner face.
SIZE = 96
CLIPS = 12
FRAMES = 12


def decode_rgb(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def file_digests(root):
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def ellipse_radius(shape, cx, cy, rx, ry):
    """Normalised elliptical radius of every pixel centre (1.0 on the ellipse)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    return np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2), yy


def box_ellipse(box):
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(out, count=CLIPS, frames=FRAMES, width=SIZE, height=SIZE, seed=1, progress=False)
    return out, summary, read_json(out / "synth.json")


def test_layout_counts_and_metadata(tmp_path):
    summary = synthesize(tmp_path, count=7, frames=4, width=64, height=48, fps=10, seed=3, progress=False)
    on_disk = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    persons = [f"p{index:04d}" for index in range(4)]  # ceil(7 / 2)
    expected = sorted([f"real/{p}/c0.mp4" for p in persons] + [f"fake/{p}/c0.mp4" for p in persons[:3]])
    assert on_disk == sorted(expected + ["synth.json"])  # no temp files left behind
    assert summary["counts"] == {"real": 4, "fake": 3}
    assert summary["persons"] == 4 and summary["videos"] == 7
    assert summary["total_bytes"] == sum((tmp_path / name).stat().st_size for name in expected)

    meta = read_json(tmp_path / "synth.json")
    assert meta["complete"] is True
    assert meta["params"] == {"count": 7, "frames": 4, "width": 64, "height": 48, "fps": 10, "codec": "h264",
                              "seed": 3, "gop": 12}
    assert sorted(meta["files"]) == expected
    for relative, info in meta["files"].items():
        label, person, _ = relative.split("/")
        assert (info["label"], info["person"]) == (label, person)
        assert (info["frames"], info["fps"], info["width"], info["height"], info["codec"]) == (4, 10, 64, 48, "h264")
        assert len(info["boxes"]) == len(info["inner_faces"]) == 4
        assert all(isinstance(value, int) for box in info["boxes"] for value in box)


@pytest.mark.parametrize("codec, extension", [("h264", ".mp4"), ("vp9", ".webm")])
def test_every_file_decodes_to_exactly_the_frames_written(tmp_path, codec, extension):
    frames, width, height, fps, gop = 10, 80, 64, 8, 4
    synthesize(tmp_path, count=4, frames=frames, width=width, height=height, fps=fps, codec=codec, gop=gop,
               progress=False)
    videos = sorted(tmp_path.rglob("*" + extension))
    assert len(videos) == 4
    for path in videos:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == codec
            assert stream.average_rate == fps
            if codec == "h264":
                assert stream.time_base == Fraction(1, fps)
            packets = [packet for packet in container.demux(stream) if packet.size]
            in_display_order = sorted(packets, key=lambda packet: packet.pts)
            keyframes = [index for index, packet in enumerate(in_display_order) if packet.is_keyframe]
            container.seek(0)
            decoded = list(container.decode(stream))
        assert len(packets) == len(decoded) == frames
        assert all((frame.width, frame.height) == (width, height) for frame in decoded)
        assert keyframes[0] == 0
        if codec == "h264":
            assert keyframes == list(range(0, frames, gop))  # a keyframe exactly every GOP
            assert [frame.pts for frame in decoded] == list(range(frames))


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    arguments = dict(count=4, frames=6, width=64, height=64, progress=False)
    for codec in ("h264", "vp9"):
        first, second, other = (tmp_path / f"{codec}-{name}" for name in ("first", "second", "other"))
        synthesize(first, codec=codec, seed=5, **arguments)
        synthesize(second, codec=codec, seed=5, **arguments)
        synthesize(other, codec=codec, seed=6, **arguments)
        assert file_digests(first) == file_digests(second)
        name = next(name for name in file_digests(first) if name.startswith("fake/"))
        for mine, theirs in zip(decode_rgb(first / name), decode_rgb(other / name)):
            assert np.abs(mine.astype(int) - theirs.astype(int)).mean() > 5

    # Regenerating into the same folder gives the same bytes; a smaller run drops the files it no longer makes.
    target = tmp_path / "h264-first"
    before = file_digests(target)
    synthesize(target, codec="h264", seed=5, **arguments)
    assert file_digests(target) == before
    synthesize(target, codec="h264", seed=5, **{**arguments, "count": 2})
    assert sorted(file_digests(target)) == ["fake/p0000/c0.mp4", "real/p0000/c0.mp4", "synth.json"]
    assert not (target / "real" / "p0001").exists()


def hue_step(frames, info):
    """How much the inner face's hue differs from the cheek just outside it, averaged over frames.

    Shading only scales the skin colour, so the brightness part of the colour difference is dropped; what is
    left is the swapped face's colour shift. Only the lower half of the seam (cheeks and chin) is used,
    away from hair, eyebrows and eyes.
    """
    steps = []
    for image, (cx, cy, rx, ry), box in zip(frames, info["inner_faces"], info["boxes"]):
        image = image.astype(np.float64)
        inner_radius, yy = ellipse_radius(image.shape, cx, cy, rx, ry)
        distance = (inner_radius - 1.0) * min(rx, ry)  # pixels from the inner-face ellipse
        face_radius, _ = ellipse_radius(image.shape, *box_ellipse(box))
        lower = yy > cy
        inside = image[lower & (distance > -3.0) & (distance < -1.5)].mean(axis=0)
        outside = image[lower & (distance > 1.5) & (face_radius < 0.85)].mean(axis=0)
        unit = outside / np.linalg.norm(outside)
        step = inside - outside
        step -= step.dot(unit) * unit
        steps.append(np.linalg.norm(step) / np.linalg.norm(outside))
    return float(np.mean(steps))


def test_a_simple_statistic_separates_fakes_from_reals(dataset):
    out, _, meta = dataset
    scores = {"real": [], "fake": []}
    for relative, info in meta["files"].items():
        scores[info["label"]].append(hue_step(decode_rgb(out / relative), info))
    assert len(scores["real"]) == len(scores["fake"]) == CLIPS // 2
    # Measured over 20 seeds (240 clips) at this size: reals stayed <= 0.020, fakes >= 0.027.
    threshold = 0.024
    assert max(scores["real"]) < threshold < min(scores["fake"]), scores


def test_boxes_lie_in_the_frame_and_frame_the_face(dataset):
    out, _, meta = dataset
    cheek_colours = {}
    for relative, info in meta["files"].items():
        frames = decode_rgb(out / relative)
        assert len(frames) == len(info["boxes"]) == FRAMES
        assert len({tuple(box) for box in info["boxes"]}) > 1  # the face moves
        cheeks = []
        for image, box in zip(frames, info["boxes"]):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            assert 0.25 * SIZE < x2 - x1 < 0.7 * SIZE and x2 - x1 < y2 - y1  # a face-sized, upright ellipse
            face_radius, yy = ellipse_radius(image.shape, *box_ellipse(box))
            cy = (y1 + y2) / 2
            red, green, blue = (image[..., channel].astype(int) for channel in range(3))
            skin = (red >= green) & (green >= blue - 10) & (red - blue >= 25)
            below_hair = (face_radius < 0.9) & (yy > cy - 0.3 * (y2 - y1) / 2)
            assert skin[below_hair].mean() > 0.85, (relative, box)
            cheeks.append(np.median(image[(face_radius > 0.75) & (face_radius < 0.9) & (yy > cy)], axis=0))
        cheek_colours[relative] = np.mean(cheeks, axis=0)

    # A fake is made from the same person as its real clip: same skin on the outer cheeks (outside the
    # swapped inner face), though background and motion differ.
    for person in range(CLIPS // 2):
        real_info = meta["files"][f"real/p{person:04d}/c0.mp4"]
        fake_info = meta["files"][f"fake/p{person:04d}/c0.mp4"]
        assert real_info["boxes"] != fake_info["boxes"]
        difference = np.abs(cheek_colours[f"real/p{person:04d}/c0.mp4"] - cheek_colours[f"fake/p{person:04d}/c0.mp4"])
        assert difference.max() < 12, (person, difference)


def test_bad_arguments_and_foreign_folders_are_refused(tmp_path):
    for bad in (dict(count=1), dict(frames=0), dict(width=127), dict(height=0), dict(width=-64),
                dict(codec="av1"), dict(gop=0)):
        with pytest.raises(DfdError):
            synthesize(tmp_path / "out", **{"count": 2, "frames": 2, "width": 32, "height": 32, **bad}, progress=False)
    assert not (tmp_path / "out").exists()

    foreign = tmp_path / "my-videos"
    foreign.mkdir()
    (foreign / "holiday.mp4").write_bytes(b"not ours")
    with pytest.raises(DfdError, match="no synth.json"):
        synthesize(foreign, count=2, frames=2, width=32, height=32, progress=False)
    assert sorted(path.name for path in foreign.iterdir()) == ["holiday.mp4"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dfdtrain", "synth", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_json_summary(tmp_path):
    result = run_cli("--out", tmp_path / "data", "--count", 3, "--frames", 5, "--size", "64x48", "--fps", 6,
                     "--codec", "vp9", "--seed", 2, "--gop", 5, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"real": 2, "fake": 1} and summary["persons"] == math.ceil(3 / 2)
    assert summary["params"] == {"count": 3, "frames": 5, "width": 64, "height": 48, "fps": 6, "codec": "vp9",
                                 "seed": 2, "gop": 5}
    assert "synth" in result.stderr  # the progress bar goes to stderr, not into the JSON
    frames = decode_rgb(tmp_path / "data" / "fake" / "p0000" / "c0.webm")
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)

    human = run_cli("--out", tmp_path / "data", "--count", 2, "--frames", 2, "--size", "32x32")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("wrote 2 videos (1 real, 1 fake, 1 persons)")


@pytest.mark.parametrize("arguments, named", [(["--size", "127x128"], "--size"), (["--codec", "av1"], "codec")])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, arguments, named):
    result = run_cli("--out", tmp_path / "data", *arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfdtrain synth: error:") and named in lines[0], result.stderr
