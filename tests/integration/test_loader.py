"""Streaming loaders on real shards: batches, broken samples, and 2-rank gloo runs over uneven shards."""

import json
import subprocess
import sys
import time

import pytest
import torch
import webdataset as wds

from support import LOADER_JOB, clip_spec, data_config, frames_by_key, make_synth_shards, train_tiny, write_garbage_shard
from dfdtrain.data.decode.decoders import DECODERS
from dfdtrain.data.loading.loader import LoaderError, VideoLoader, expand_shards
from dfdtrain.data.shards.catalog import label_counts, positive_class_weight
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json



@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Real shards of 14 synth clips (train/val), small and uneven, plus a shard holding a broken video."""
    root = tmp_path_factory.mktemp("loader")
    make_synth_shards(root, count=14, frames=12, val_fraction=0.4, target_bytes=120_000, seed=2)
    with wds.TarWriter(str(root / "shards" / "broken-000000.tar")) as writer:
        meta = {"key": "broken_clip", "label": 1, "frames": 12, "split": "val"}
        writer.write({"__key__": "broken_clip", "mp4": b"\x00\x00\x00\x18ftypisom" + b"\x01" * 500,
                      "json": json.dumps(meta).encode()})
        # a real clip whose stored frame count is wrong (300 claimed, 12 real): re-counted, not skipped
        clip = next((root / "data" / "real").rglob("*.mp4")).read_bytes()
        meta = {"key": "lying_count", "label": 0, "frames": 300, "split": "val"}
        writer.write({"__key__": "lying_count", "mp4": clip, "json": json.dumps(meta).encode()})
    return root / "shards"


def test_train_batches_have_the_promised_shapes_and_count(shards):
    loader = VideoLoader(shards / "train-*.tar", clip_spec(6, 48), data_config(batch_size=3), train=True)
    train_count = read_json(shards / "index.json")["splits"]["train"]["samples"]
    assert len(loader) == train_count // 3
    batches = list(loader)
    assert len(batches) == len(loader)
    for batch in batches:
        assert batch["frames"].shape == (3, 6, 3, 48, 48) and batch["frames"].dtype == torch.float32
        assert batch["mask"].shape == (3, 6) and batch["mask"].all()  # 12-frame clips fill 6 slots
        assert batch["label"].shape == (3,) and set(batch["label"].tolist()) <= {0.0, 1.0}
        assert len(batch["key"]) == 3 and all(meta["split"] == "train" for meta in batch["meta"])


def test_short_videos_are_padded_and_masked(shards):
    batch = next(iter(VideoLoader(shards / "val-*.tar", clip_spec(16, 32), data_config(batch_size=4))))
    assert batch["mask"][:, :12].all() and not batch["mask"][:, 12:].any()
    normalised_zero = (0 - 0.485) / 0.229
    assert torch.allclose(batch["frames"][:, 12:, 0], torch.full_like(batch["frames"][:, 12:, 0], normalised_zero))


def test_evaluation_sees_every_video_once_and_counts_the_broken_one(shards):
    loader = VideoLoader([str(shards / "val-*.tar"), str(shards / "broken-*.tar")], clip_spec(4, 32),
                         data_config(batch_size=2, num_workers=2))
    batches = list(loader)
    keys = [key for batch in batches for key in batch["key"]]
    val_keys = {json.loads(sample["json"])["key"] for sample in
                wds.WebDataset(expand_shards(str(shards / "val-*.tar")), shardshuffle=False)}
    assert sorted(keys) == sorted(val_keys | {"lying_count"})
    lying = next(meta for batch in batches for meta in batch["meta"] if meta["key"] == "lying_count")
    assert lying["frames"] == 12 and lying["frame_indices"] == [1, 4, 7, 10]
    assert [(item["key"], item["reason"]) for item in loader.skipped] == [("broken_clip", "undecodable")]


def test_a_training_shard_cut_short_is_a_named_skip_and_verify_shards_refuses_it(shards, tmp_path):
    """The tar reader gives a broken tar's samples up to the damage and one skip naming the shard and the byte
    offset (webdataset's reader only warned); data.verify_shards refuses the shard before reading, in one line."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = max(copy.glob("train-*.tar"), key=lambda path: path.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    loader = VideoLoader(str(shard), clip_spec(4, 32), data_config(batch_size=1), train=False)
    keys = [key for batch in loader for key in batch["key"]]
    stops = [item for item in loader.skipped if item["reason"] == "unreadable-shard"]
    assert keys and len(stops) == 1 and stops[0]["shard"] == str(shard), loader.skipped
    assert f"tar read error at byte {stops[0]['offset']}: ReadError: unexpected end of data" in stops[0]["detail"]
    with pytest.raises(DfdError, match=rf"{shard.name}: sha256 .* differs from .* in its index.json"):
        VideoLoader(str(shard), clip_spec(4, 32), data_config(batch_size=1, verify_shards=True), train=True)
    VideoLoader(str(shards / "train-*.tar"), clip_spec(4, 32), data_config(verify_shards=True), train=True)


def test_class_counts_and_balancing(shards):
    urls = expand_shards(str(shards / "train-*.tar"))
    counts = label_counts(urls)
    assert sum(counts.values()) == read_json(shards / "index.json")["splits"]["train"]["samples"]
    assert positive_class_weight(urls) == pytest.approx(counts[0] / counts[1])
    data = data_config(batch_size=2, class_balance=True, epoch_samples=200)
    labels = [label for batch in VideoLoader(urls, clip_spec(2, 16), data, train=True) for label in batch["label"].tolist()]
    assert len(labels) == 200 and 0.35 < sum(labels) / len(labels) < 0.65


@pytest.mark.parametrize("workers", [0, 2])
def test_two_rank_gloo_run_over_uneven_shards(shards, tmp_path, workers):
    train = sorted(str(path) for path in shards.glob("train-*.tar"))
    evaluation = sorted(str(path) for path in shards.glob("val-*.tar")) + [str(shards / "broken-000000.tar")]
    assert len(train) < 2 * 2 or workers == 0  # fewer train shards than ranks x workers, on purpose
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + workers),
         str(LOADER_JOB), ",".join(train), ",".join(evaluation), str(out), str(workers)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["train_steps"] == [report["len"], report["len"]]  # equal steps: no DDP hang
    seen = [item["key"] for item in report["eval"]]
    val_keys = {json.loads(sample["json"])["key"] for sample in
                wds.WebDataset(evaluation[:-1], shardshuffle=False)}
    assert sorted(seen) == sorted(val_keys | {"lying_count"})  # exactly once across both ranks
    assert [item["key"] for item in report["eval_skipped"]] == ["broken_clip"]


def test_dali_path_gives_the_pyav_path_batches_on_vp9(tmp_path):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    make_synth_shards(tmp_path, count=6, frames=12, val_fraction=0, target_bytes=40_000, seed=4, height=48,
                      codec="vp9")
    shards, spec = tmp_path / "shards" / "train-*.tar", clip_spec(5, 32)
    pyav = frames_by_key(VideoLoader(shards, spec, data_config(batch_size=4)))
    dali_loader = VideoLoader(shards, spec, data_config(batch_size=4, decoder="dali"))
    assert dali_loader.dali is not None
    dali = frames_by_key(dali_loader)
    assert sorted(dali) == sorted(pyav) and len(dali) == 6
    for key in pyav:  # DALI's YUV->RGB differs by ~1.6/255 on average (bilinear vs nearest chroma)
        assert (dali[key] - pyav[key]).abs().mean() < 0.06, key
    train = VideoLoader(shards, spec, data_config(batch_size=4, decoder="dali"), train=True)
    batches = list(train)
    assert len(batches) == len(train) and batches[0]["frames"].shape == (4, 5, 3, 32, 32)


@DECODERS.register("test-broken-decoder")
class BrokenDecoder:
    """A decoder with a bug, not a bad video: no skip can fix it, so the run must stop and say where."""

    def read(self, source, indices, name=None):
        raise ZeroDivisionError("a bug in the decoder")


def test_a_two_worker_loader_runs_under_spawn(shards):
    """The stages are small picklable objects: DataLoader workers may start by spawn (or forkserver, Python 3.14's
    default on Linux), and they give the batches the forked workers give."""
    spec = clip_spec(4, 32)
    evaluation = [str(shards / "val-*.tar"), str(shards / "broken-*.tar")]
    forked = frames_by_key(VideoLoader(evaluation, spec, data_config(batch_size=2, num_workers=2)))
    spawned_loader = VideoLoader(evaluation, spec, data_config(batch_size=2, num_workers=2,
                                                               worker_start_method="spawn"))
    spawned = frames_by_key(spawned_loader)
    assert sorted(spawned) == sorted(forked) and all(torch.equal(spawned[key], forked[key]) for key in forked)
    assert [item["key"] for item in spawned_loader.skipped] == ["broken_clip"]
    train = VideoLoader(shards / "train-*.tar", spec, data_config(batch_size=2, num_workers=2,
                                                                  worker_start_method="spawn"), train=True)
    batches = list(train)
    assert len(batches) == len(train) and batches[0]["frames"].shape == (2, 4, 3, 32, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stage_failure_that_is_not_a_bad_video_stops_with_one_line(shards, workers):
    loader = VideoLoader(shards / "val-*.tar", clip_spec(4, 32),
                         data_config(decoder="test-broken-decoder", num_workers=workers))
    with pytest.raises(LoaderError) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and "data loader stage 'decode' failed on sample " in message
    assert "val-000000.tar: ZeroDivisionError: a bug in the decoder" in message
    assert loader.skipped == []  # not counted as bad data


def test_metadata_without_label_or_frame_count_is_skipped_and_named(tmp_path):
    with wds.TarWriter(str(tmp_path / "odd-000000.tar")) as writer:
        writer.write({"__key__": "no_label", "mp4": b"x", "json": json.dumps({"frames": 3}).encode()})
        writer.write({"__key__": "text_count", "mp4": b"x", "json": json.dumps({"label": 1, "frames": "3"}).encode()})
        writer.write({"__key__": "not_json", "mp4": b"x", "json": b"{label"})
    loader = VideoLoader(tmp_path / "odd-*.tar", clip_spec(2, 16), data_config())
    assert list(loader) == []
    assert [(item["key"], item["reason"], item["shard"].endswith("odd-000000.tar")) for item in loader.skipped] == [
        ("no_label", "unreadable", True), ("text_count", "unreadable", True), ("not_json", "unreadable", True)]
    assert "frame count" in loader.skipped[1]["detail"]


def test_skip_guard_stops_a_training_run_of_broken_videos_in_bounded_time(shards, tmp_path):
    write_garbage_shard(tmp_path / "train-000000.tar", 6, "train")
    started = time.time()
    result = train_tiny(tmp_path / "run", shards, f"data.train_shards={tmp_path}/train-*.tar", "data.num_workers=2",
                        "data.epoch_samples=64")
    lines = [line for line in result.stderr.splitlines() if line.strip() and "[WARNING]" not in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "skip guard (data.max_skip_fraction 0.5): 64 of the last 64 training samples could not be used" in lines[0]
    assert "garbage" in lines[0] and "undecodable" in lines[0]
    assert time.time() - started < 120
    # a partly broken stream (one broken video among the others) trains on, the broken one counted
    mixed = VideoLoader([str(shards / "val-*.tar"), str(shards / "broken-*.tar")], clip_spec(2, 16),
                        data_config(batch_size=2, epoch_samples=40, skip_window=8), train=True)
    assert len(list(mixed)) == len(mixed) and any(item["key"] == "broken_clip" for item in mixed.skipped)
