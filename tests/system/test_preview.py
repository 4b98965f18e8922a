"""dfdtrain preview: contact sheets from a real video (with MTCNN boxes) and from a shard sample."""

import json
import tarfile

import numpy as np
from PIL import Image

from support import run_cli
from dfdtrain.data.ingest.manifest import build_manifest, write_manifest
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.demo.synth import synthesize


def colour_pixels(path, rgb):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(rgb)).sum(axis=2) < 40).sum())


def test_preview_of_a_real_video_draws_faces_and_crops(tmp_path, fixtures):
    out = tmp_path / "sheet.png"
    video = fixtures / "ffpp/original_sequences/youtube/c40/videos/183.mp4"
    result = run_cli("preview", video, "--faces", "mtcnn", "--frames", "4", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    drawn = json.loads(result.stdout)
    assert drawn["sampled"] == 4 and drawn["face_frames"] == 4
    assert colour_pixels(out, (0, 255, 0)) > 200 and colour_pixels(out, (255, 220, 0)) > 200  # boxes drawn


def test_preview_of_a_shard_sample_uses_the_centre_crop_without_boxes(tmp_path):
    synthesize(tmp_path / "data", count=2, frames=8, width=64, height=48, seed=1, progress=False)
    rows, summary = build_manifest("folder", tmp_path / "data", val_fraction=0, test_fraction=0, progress=False)
    write_manifest(tmp_path / "m.jsonl", rows, summary)
    write_shards(tmp_path / "m.jsonl", tmp_path / "shards", progress=False)
    shard = next((tmp_path / "shards").glob("*.tar"))
    key = rows[1]["key"]
    result = run_cli("preview", shard, "--key", key, "--frames", "8", "--out", tmp_path / "s.png", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == key
    assert colour_pixels(tmp_path / "s.png", (0, 255, 0)) == 0 and colour_pixels(tmp_path / "s.png", (255, 220, 0)) > 50
    missing = run_cli("preview", shard, "--key", "nope", "--out", tmp_path / "x.png")
    assert missing.returncode == 2 and "nope" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    # a folder, and a shard truncated inside its second sample: one line each, naming the file and the reason
    folder = run_cli("preview", tmp_path / "shards", "--out", tmp_path / "d.png")
    assert folder.returncode == 2 and "a directory" in folder.stderr and "Traceback" not in folder.stderr
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(shard.read_bytes()[:int(shard.stat().st_size * 0.7)])
    with tarfile.open(shard) as tar:
        last_key = tar.getnames()[-1].split(".")[0]  # the second sample in the tar, past the cut
    broken = run_cli("preview", truncated, "--key", last_key, "--out", tmp_path / "t.png")
    lines = broken.stderr.strip().splitlines()
    assert broken.returncode == 2 and len(lines) == 1, broken.stderr
    assert "truncated.tar: tar read error at byte" in lines[0] and "unexpected end of data" in lines[0]
    first = run_cli("preview", truncated, "--out", tmp_path / "f.png")  # the first sample is whole: drawn
    assert first.returncode == 0, first.stderr


def test_doubtful_sheets_of_a_folder_that_is_not_a_face_store_are_one_line(tmp_path):
    """preview --doubtful reads index.json from someone else's folder: missing, not JSON, of the original store,
    with entries that are not objects, or naming shards outside the folder: one line each, nothing drawn."""
    def one_line(expected):
        result = run_cli("preview", tmp_path, "--doubtful", "--out", tmp_path / "d.png")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr and not (tmp_path / "d.png").exists()

    one_line("index.json: not found")
    (tmp_path / "index.json").write_text("{not json")
    one_line("not a shard index.json")
    (tmp_path / "index.json").write_text(json.dumps({"shards": [], "store": "original"}))
    one_line("no doubtful_faces list")
    (tmp_path / "index.json").write_text(json.dumps({"shards": [], "doubtful_faces": ["k"]}))
    one_line("not a shard index.json")
    outside = {"shards": [{"name": "../elsewhere.tar", "keys": ["k"]}], "doubtful_faces": [{"key": "k"}]}
    (tmp_path / "index.json").write_text(json.dumps(outside))
    one_line("doubtful video(s) k not found in their shards")
