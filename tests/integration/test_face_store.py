"""shard --store faces on real FF++ videos: samples and mapping, index.json, resume, CLI, loaders (PyAV, DALI
VP9) and a real training run through the same engine."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from support import SMALL_CLIP, clip_spec, data_config, frames_by_key, no_face_clip, run_cli, train_tiny
from dfdtrain.data.faces.crops import crop_and_resize
from dfdtrain.data.decode.decoders import build_decoder
from dfdtrain.data.faces.clip_options import FaceClipOptions
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.loading.stages import ClipDecoder
from dfdtrain.demo.preview import preview
from dfdtrain.data.shards.samples import Compute
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.demo.encode import encode_video
from dfdtrain.data.faces.tracks import TrackOptions
from dfdtrain.data.decode.video import probe
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json

pytest.importorskip("facenet_pytorch")

YOUTUBE = "ffpp/original_sequences/youtube/c40/videos"
SIZE = 64


def row(key, root, path, label, group, split):
    return {"key": key, "path": path, "root": str(root), "label": label, "dataset": "test", "group": group,
            "split": split}


@pytest.fixture(scope="module")
def face_shards(tmp_path_factory, fixtures):
    """Face-clip shards of real FF++ clips (585 has two people), generated face-less clips (labelled fake: the
    splits need both labels, and MTCNN on real videos is what costs test time) and a cut-off video."""
    root = tmp_path_factory.mktemp("face_store")
    no_face_clip(root / "plain.mp4")
    no_face_clip(root / "plain2.mp4", frames=24)
    (root / "cut.mp4").write_bytes(SMALL_CLIP.read_bytes()[:100_000])
    rows = [row("real469", fixtures, f"{YOUTUBE}/469.mp4", 0, "469", "train"),
            row("plain", root, "plain.mp4", 1, "plain", "train"),
            row("cut", root, "cut.mp4", 0, "cut", "train"),
            row("real585", fixtures, f"{YOUTUBE}/585.mp4", 0, "585", "val"),
            row("plain2", root, "plain2.mp4", 1, "plain2", "val")]
    options = FaceClipOptions(size=SIZE, tracks=TrackOptions(detect_every=10, max_tracks=2))
    index = write_shards(rows, root / "shards", progress=False, store="faces", face_clip_options=options)
    return root / "shards", rows, options, index


def read_samples(shards):
    return {sample["__key__"]: sample for sample in
            wds.WebDataset(sorted(str(path) for path in shards.glob("*.tar")), shardshuffle=False)}


def test_samples_hold_clips_that_map_back_to_the_source(face_shards):
    shards, rows, _, index = face_shards
    samples = read_samples(shards)
    assert sorted(samples) == ["plain", "plain2", "real469", "real585"]
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        source = probe(next(r for r in rows if r["key"] == key)["root"] + "/" + meta["path"])
        assert meta["store"] == "faces" and meta["source"]["frames"] == source["frames"]
        assert (meta["width"], meta["height"], meta["codec"]) == (SIZE, SIZE, "h264")
        assert meta["no_face"] == key.startswith("plain")
        for number, track in enumerate(meta["tracks"]):
            assert track["id"] == number and track["member"] == ("mp4" if number == 0 else f"track{number}.mp4")
            clip = sample[track["member"]]
            # the clip decodes to the recorded number of frames, one source frame and window for each
            assert probe(clip, name=f"x.{track['member']}")["frames"] == track["frames"]
            assert len(track["source_frames"]) == len(track["windows"]) == track["frames"]
            assert track["source_frames"] == list(range(track["source_frames"][0], track["source_frames"][-1] + 1))
            assert 0 <= track["source_frames"][0] and track["source_frames"][-1] < source["frames"]
            assert track["fidelity"]["frames_compared"] > 0 and track["bytes"] == len(clip)
        assert meta["frames"] == meta["tracks"][0]["frames"]
        assert meta["encode"]["gop"] == 4 and meta["encode"]["max_size"] == SIZE == meta["tracks"][0]["size"]
    two = json.loads(samples["real585"]["json"])
    assert len(two["tracks"]) == 2 and "track1.mp4" in samples["real585"]
    # index.json: the store, the clips' fidelity, and the cut-off video named with its reason
    assert index["store"] == "faces" and read_json(shards / "index.json") == index
    faces = index["face_clips"]
    assert faces["videos"] == 4 and faces["no_face"] == 2 and faces["tracks"] >= 5
    assert 0 < faces["mean_abs_error_mean"] <= faces["mean_abs_error_max"] and faces["psnr_db_mean"] > 25
    assert [(item["key"], item["reason"]) for item in index["skipped"]] == [("cut", "truncated")]


def test_rerun_resumes_with_the_same_face_options(face_shards):
    shards, rows, options, index = face_shards
    # a finished run left no .parts/: the re-run resumes from index.json's records
    assert not (shards / ".parts").exists()
    again = write_shards(rows, shards, progress=False, store="faces", face_clip_options=options)
    assert again["totals"]["resumed_shards"] == index["totals"]["shards"]
    assert again["face_clips"] == index["face_clips"] and again["skipped"] == index["skipped"]
    # the costs of what is there stay: the first run's stage seconds, and its seconds plus the rerun's
    assert again["totals"]["stage_seconds"] == index["totals"]["stage_seconds"]
    assert set(index["totals"]["stage_seconds"]) == {"decode", "detect", "track", "encode", "verify"}
    assert again["totals"]["detector_frames"] == index["totals"]["detector_frames"] > 0
    assert again["runs"][0] == index["runs"][0] and len(again["runs"]) == 2
    assert again["runs"][1]["written_shards"] == 0 and again["runs"][1]["stage_seconds"] == {}
    assert again["totals"]["seconds"] == round(index["totals"]["seconds"] + again["runs"][1]["seconds"], 2)
    assert again["doubtful_faces"] == index["doubtful_faces"]
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in index["shards"]]


def test_workers_sharing_one_batching_detector_store_the_same_clips(face_shards, tmp_path):
    shards, rows, options, _ = face_shards
    chosen = [row for row in rows if row["key"] in ("real469", "plain", "real585", "plain2")]
    compute = Compute(workers=2, shared_detector=True)  # the GPU setting, on the CPU
    index = write_shards(chosen, tmp_path / "shared", progress=False, store="faces", face_clip_options=options,
                         compute=compute)
    assert index["totals"]["shared_detector"]["batches"] > 0  # every detection went through the main process
    alone, shared = read_samples(shards), read_samples(tmp_path / "shared")
    assert sorted(shared) == sorted(row["key"] for row in chosen)
    for key in shared:  # batched with the other worker's frames, MTCNN finds the same faces (to float noise)
        tracks = [json.loads(samples[key]["json"])["tracks"] for samples in (alone, shared)]
        assert [len(found) for found in tracks] == [len(tracks[0])] * 2, key
        for one, other in zip(*tracks):
            assert one["source_frames"] == other["source_frames"] and one["size"] == other["size"], key
            assert np.abs(np.array(one["windows"]) - np.array(other["windows"])).max() <= 2, key


def test_clip_decoder_samples_in_clip_time_without_a_second_crop(face_shards):
    shards, _, _, _ = face_shards
    sample = read_samples(shards)["real585"]
    sample["meta"] = json.loads(sample["json"])
    clip = ClipDecoder(clip_spec(6, 48, crop="face"), "pyav")(sample, None)
    track = sample["meta"]["tracks"][0]
    indices = clip["meta"]["frame_indices"]
    assert max(indices) < track["frames"] and clip["meta"]["face_crop"] and clip["meta"]["track_id"] == 0
    assert clip["meta"]["source_frame_indices"] == [track["source_frames"][i] for i in indices]
    assert "tracks" not in clip["meta"]
    frames = torch.from_numpy(build_decoder("pyav").read(sample["mp4"], indices, name="x.mp4"))
    assert torch.equal(clip["frames"], crop_and_resize(frames, np.array([[0, 0, SIZE, SIZE]] * len(indices)), 48))
    # training may draw any stored track; evaluation always takes track 0
    random_tracks = ClipDecoder(clip_spec(4, 32, crop="face"), "pyav", face_track="random")
    drawn = {random_tracks(sample, np.random.default_rng(seed))["meta"]["track_id"] for seed in range(8)}
    assert drawn == {0, 1}


def test_video_loader_reads_face_clip_shards(face_shards):
    shards, _, _, _ = face_shards
    batches = list(VideoLoader(shards / "val-*.tar", clip_spec(4, 32, crop="face"), data_config(batch_size=2)))
    assert [sorted(batch["key"]) for batch in batches] == [["plain2", "real585"]]
    assert batches[0]["frames"].shape == (2, 4, 3, 32, 32) and batches[0]["mask"].all()


def test_dali_reads_vp9_face_clip_shards_like_pyav(tmp_path, fixtures):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    no_face_clip(tmp_path / "plain.mp4")
    rows = [row("real469", fixtures, f"{YOUTUBE}/469.mp4", 0, "469", "train"),
            row("plain", tmp_path, "plain.mp4", 1, "plain", "train")]
    # no upscaling, and a cap: plain's 128 px centre square is kept at 128, 469's face window (over 160 px) is
    # capped at 160; DALI decodes the two sizes onto one canvas of the model's size
    options = FaceClipOptions(size=160, codec="vp9", tracks=TrackOptions(detect_every=32))
    write_shards(rows, tmp_path / "shards", progress=False, store="faces", face_clip_options=options)
    sizes = {key: json.loads(sample["json"])["tracks"][0]["size"]
             for key, sample in read_samples(tmp_path / "shards").items()}
    assert sizes == {"plain": 128, "real469": 160}
    shards, spec = tmp_path / "shards" / "train-*.tar", clip_spec(5, 32, crop="face")
    pyav = frames_by_key(VideoLoader(shards, spec, data_config(batch_size=2)))
    dali_loader = VideoLoader(shards, spec, data_config(batch_size=2, decoder="dali"))
    assert dali_loader.dali is not None
    dali = frames_by_key(dali_loader)
    assert sorted(dali) == sorted(pyav) == ["plain", "real469"]
    for key in pyav:  # DALI's YUV->RGB differs by ~1.6/255 on average (bilinear vs nearest chroma)
        assert (dali[key] - pyav[key]).abs().mean() < 0.06, key


def test_training_runs_on_face_clip_shards(face_shards, tmp_path):
    shards, _, _, _ = face_shards
    run_dir = tmp_path / "run"
    result = train_tiny(run_dir, shards, "data.epoch_samples=4", "data.face_track=random")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val" in json.dumps(record) for record in records)
    assert (run_dir / "checkpoints" / "last").exists()


def test_shard_cli_face_store_skips_faceless_videos_when_asked(tmp_path, fixtures):
    no_face_clip(tmp_path / "plain.mp4")
    rows = [row("real469", fixtures, f"{YOUTUBE}/469.mp4", 0, "469", "train"),
            row("plain", tmp_path, "plain.mp4", 0, "plain", "train")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(item) + "\n" for item in rows))
    result = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "shards", "--store", "faces",
                     "--face-size", "48", "--face-crf", "20", "--face-gop", "2", "--detect-every", "32",
                     "--no-face", "skip", "--min-track-share", "0.5", "--min-track-score", "0.9", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    index = json.loads(result.stdout)
    assert index["totals"]["samples"] == 1 and index["options"]["face_clips"]["crf"] == 20
    tracks = index["options"]["face_clips"]["tracks"]  # in the plan hash: other thresholds rewrite the shards
    assert (tracks["min_share"], tracks["min_score"]) == (0.5, 0.9)
    assert [(item["key"], item["reason"]) for item in index["skipped"]] == [("plain", "no-face")]
    meta = json.loads(read_samples(tmp_path / "shards")["real469"]["json"])
    assert meta["encode"]["gop"] == 2 and meta["width"] == 48
    bad = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "s2", "--store", "faces",
                  "--face-size", "47")
    assert bad.returncode == 2 and "even" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_a_one_frame_video_with_a_face_is_stored_as_its_face_clip(tmp_path, fixtures):
    # one real frame with a clear face (MTCNN: p > 0.99): fewer detection frames than min_detections (3) exist
    frame = build_decoder("pyav").read(str(fixtures / YOUTUBE / "469.mp4"), [10])[0]
    encode_video(str(tmp_path / "one.mp4"), [frame], "h264", frame.shape[1], frame.shape[0], 25, 12)
    rows = [row("one", tmp_path, "one.mp4", 0, "one", "train")]
    index = write_shards(rows, tmp_path / "shards", progress=False, store="faces",
                         face_clip_options=FaceClipOptions(size=SIZE, no_face="skip"))
    assert index["skipped"] == [] and index["totals"]["samples"] == 1
    sample = read_samples(tmp_path / "shards")["one"]
    meta = json.loads(sample["json"])
    (track,) = meta["tracks"]
    assert not meta["no_face"] and meta["frames"] == 1 and track["source_frames"] == [0]
    (detection,) = track["detections"]
    assert detection[0] == 0 and detection[5] > 0.99
    assert probe(sample["mp4"])["frames"] == 1


def test_shard_progress_counts_frames_within_each_video(tmp_path):
    # two workers: the frames are counted in the worker processes and shown by the main one
    no_face_clip(tmp_path / "plain.mp4")
    no_face_clip(tmp_path / "plain2.mp4", frames=24)
    rows = [row("plain", tmp_path, "plain.mp4", 0, "plain", "train"),
            row("plain2", tmp_path, "plain2.mp4", 1, "plain2", "train")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(item) + "\n" for item in rows))
    result = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "shards", "--store", "faces",
                     "--face-size", "32", "--detect-every", "8", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "train-000000.tar, frames: 64 scanned for faces, 64 encoded" in result.stderr, result.stderr[-2000:]
    assert "2/2" in result.stderr and not (tmp_path / "shards/.parts").exists()


def test_preview_draws_any_track_of_a_face_clip_sample(face_shards, tmp_path):
    shards, _, _, _ = face_shards
    shard = shards / "val-000000.tar"
    tracks = json.loads(read_samples(shards)["real585"]["json"])["tracks"]
    drawn = {}
    for number, args in ((1, ["--key", "real585.track1"]), (1, ["--key", "real585", "--track", "1"]),
                         (0, ["--key", "real585"])):
        out = tmp_path / f"{len(drawn)}.png"
        result = run_cli("preview", shard, *args, "--frames", "4", "--out", out, "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["key"], summary["track"], summary["frames"]) == ("real585", number, tracks[number]["frames"])
        drawn[tuple(args)] = out.read_bytes()
    assert drawn[("--key", "real585.track1")] == drawn[("--key", "real585", "--track", "1")]
    assert drawn[("--key", "real585.track1")] != drawn[("--key", "real585")]
    # a track the sample does not have: one line naming the sample and its tracks
    missing = run_cli("preview", shard, "--key", "real585.track2", "--out", tmp_path / "x.png")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "sample real585 has 2 face track(s) (0-1), no track 2" in missing.stderr
    with pytest.raises(DfdError, match="sample plain2 has 1 face track"):
        preview(shard, tmp_path / "y.png", 4, key="plain2", track=1)
    with pytest.raises(DfdError, match="names track 1 and --track 0"):
        preview(shard, tmp_path / "y.png", 4, key="real585.track1", track=0)
