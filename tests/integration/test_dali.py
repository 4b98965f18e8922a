"""The DALI data path for real: CPU pipelines on generated VP9 clips and on shards written by write_shards.

DALI's CPU decoder and PyAV convert YUV to RGB with the same BT.601 limited-range matrix but upsample the
chroma differently (DALI bilinear, PyAV's swscale default nearest), so frames are compared with a tolerance
per read: mean absolute difference < 2.5/255 and 99th percentile <= 20/255. Measured on these 12 clips (all
frames): mean 1.63/255 pooled (1.36-1.94 per clip), 99th percentile 8 pooled (4-14 per clip), 99.9th 17, max
38 (sharp colour edges, where the chroma upsampling differs most). On top, every DALI frame must be closer to
the PyAV frame of its own index than to any other frame of the clip: the right frames, not similar ones.
"""

import collections
import os

import numpy as np
import pytest
import torch

try:
    import nvidia.dali  # noqa: F401
except Exception as error:  # a broken install fails with more than ImportError
    pytest.skip(f"nvidia.dali does not import ({type(error).__name__}: {error})", allow_module_level=True)

from dfdtrain.data.decode.dali import DaliDecoder
from dfdtrain.data.decode.dali_shards import DaliShardLoader
from dfdtrain.data.ingest.manifest import build_manifest
from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.demo.synth import synthesize
from dfdtrain.core.errors import BadVideo, DfdError
from support import assert_close_to_pyav

NUM_FRAMES = 8
SAMPLER = SamplerConfig("uniform", NUM_FRAMES)
HEIGHT, WIDTH = 48, 64
def make_rows(root, prefix, **synth_options):
    """Generate VP9 clips and index them as a folder dataset, all in one split; keys/groups get a prefix."""
    synthesize(root, codec="vp9", progress=False, **synth_options)
    rows, _ = build_manifest("folder", root, val_fraction=0.0, test_fraction=0.0, progress=False)
    for row in rows:
        row["key"], row["group"] = f"{prefix}_{row['key']}", f"{prefix}_{row['group']}"
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 VP9 clips (8 of 16 frames, 4 of 5 frames: shorter than NUM_FRAMES) in several shards + the rows."""
    folder = tmp_path_factory.mktemp("dali")
    rows = make_rows(folder / "long", "long", count=8, frames=16, width=WIDTH, height=HEIGHT, seed=1, gop=8)
    rows += make_rows(folder / "short", "short", count=4, frames=5, width=WIDTH, height=HEIGHT, seed=2, gop=8)
    # About a third of the bytes per shard: three tars, so DALI's rank split cuts across files.
    index = write_shards(rows, folder / "shards", target_bytes=sum(row["bytes"] for row in rows) // 3 + 1,
                         progress=False)
    shard_paths = sorted(str(path) for path in (folder / "shards").glob("*.tar"))
    assert len(shard_paths) == index["totals"]["shards"] >= 2 and index["totals"]["samples"] == 12
    return {"folder": folder, "rows": {row["key"]: row for row in rows}, "shards": shard_paths}


def video_path(row):
    return os.path.join(row["root"], row["path"])


def test_decoder_matches_pyav_for_any_indices(dataset):
    decoder = DaliDecoder("cpu")
    long_rows = [row for key, row in dataset["rows"].items() if key.startswith("long_")][:3]
    stats = []
    for row in long_rows:
        path = video_path(row)
        stats.append(assert_close_to_pyav(decoder.read(path, range(16)), path, list(range(16)), 16))
        unsorted = [15, 0, 7, 3, 3, 9, 15]  # unsorted, with duplicates
        frames = decoder.read(path, unsorted)
        stats.append(assert_close_to_pyav(frames, path, unsorted, 16))
        assert np.array_equal(frames[3], frames[4]) and np.array_equal(frames[0], frames[6])
        with open(path, "rb") as handle:  # bytes in, the same frames out
            assert np.array_equal(decoder.read(handle.read(), unsorted, name=row["path"]), frames)
    print("DALI vs PyAV |difference| per read (mean, p99, max):",
          [(round(float(mean), 2), float(p99), largest) for mean, p99, largest in stats])


def test_decoder_devices():
    assert DaliDecoder("auto").device == ("gpu" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DfdError, match="needs CUDA"):
            DaliDecoder("gpu")
    with pytest.raises(DfdError, match="must be one of"):
        DaliDecoder("tpu")


def test_decoder_refuses_h264_on_cpu_and_reports_truncation(dataset, tmp_path):
    decoder = DaliDecoder("cpu")
    synthesize(tmp_path / "h264", count=2, frames=6, width=WIDTH, height=HEIGHT, codec="h264", progress=False)
    h264_path = str(tmp_path / "h264/real/p0000/c0.mp4")
    with pytest.raises(BadVideo, match="DALI decodes only VP8/VP9/MJPEG on the CPU; this video is h264") as caught:
        decoder.read(h264_path, [0])
    assert caught.value.reason == "undecodable" and caught.value.path == h264_path

    path = video_path(next(row for key, row in dataset["rows"].items() if key.startswith("short_")))
    with pytest.raises(BadVideo, match="frame 5 requested, video has 5 frames") as caught:
        decoder.read(path, [0, 5])
    assert caught.value.reason == "truncated"
    # DALI invalidates a pipeline after an operator error; the decoder builds a new one.
    assert decoder.read(path, [4]).shape == (1, HEIGHT, WIDTH, 3)
    with pytest.raises(BadVideo) as caught:
        decoder.read(b"\x1a\x45\xdf\xa3 not really a webm file" * 10, [0])
    assert caught.value.reason == "undecodable"
    with pytest.raises(ValueError, match="negative"):
        decoder.read(path, [-1])


def check_batch(batch, rows, train):
    """Shapes, dtypes, labels, masks and padding against the json rows; returns the keys."""
    size = len(batch["key"])
    assert batch["frames"].shape == (size, NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert str(batch["frames"].dtype) == "torch.uint8" and str(batch["mask"].dtype) == "torch.bool"
    assert batch["mask"].shape == batch["indices"].shape == (size, NUM_FRAMES)
    assert batch["label"].tolist() == [float(rows[key]["label"]) for key in batch["key"]]
    for number, key in enumerate(batch["key"]):
        row, meta = rows[key], batch["meta"][number]
        assert (meta["key"], meta["label"], meta["frames"]) == (key, row["label"], row["frames"])
        real = int(batch["mask"][number].sum())
        assert real == min(row["frames"], NUM_FRAMES)
        assert batch["mask"][number, :real].all() and not batch["mask"][number, real:].any()
        indices = batch["indices"][number, :real].numpy()
        assert (np.diff(indices) > 0).all() and indices[-1] < row["frames"]
        if not train:  # evaluation: exactly the sampler's deterministic indices
            expected, _ = sample_indices(row["frames"], SamplerConfig("uniform", NUM_FRAMES))
            assert list(indices) == list(expected)
        assert (batch["frames"][number, real:] == 0).all()  # padding frames are black
    return batch["key"]


@pytest.mark.parametrize("world_size,batch_size", [(2, 4), (5, 2)])
def test_eval_ranks_together_see_every_key_once(dataset, world_size, batch_size):
    rows = dataset["rows"]
    seen = []
    for rank in range(world_size):
        loader = DaliShardLoader(dataset["shards"], batch_size, SAMPLER, rank, world_size, device="cpu",
                                 train=False)
        first_pass = [check_batch(batch, rows, train=False) for batch in loader]
        assert len(first_pass) == len(loader) == -(-loader.samples // batch_size)
        assert all(len(keys) == batch_size for keys in first_pass[:-1])
        rank_keys = [key for keys in first_pass for key in keys]
        assert len(rank_keys) == loader.samples == (rank + 1) * 12 // world_size - rank * 12 // world_size
        # A pass left early does not shift the next one: every pass starts at the rank's first sample.
        next(iter(loader))
        assert [key for batch in loader for key in batch["key"]] == rank_keys
        seen += rank_keys
    assert sorted(seen) == sorted(rows)


def test_eval_frames_match_pyav(dataset):
    rows = dataset["rows"]
    loader = DaliShardLoader(dataset["shards"], 6, SAMPLER, 0, 1, device="cpu", train=False)
    checked = collections.Counter()
    for batch in loader:
        for number, key in enumerate(batch["key"]):
            real = int(batch["mask"][number].sum())
            indices = batch["indices"][number, :real].tolist()
            frames = batch["frames"][number, :real].numpy()
            assert_close_to_pyav(frames, video_path(rows[key]), indices, rows[key]["frames"])
            checked[key.split("_")[0]] += 1
    assert checked == {"long": 8, "short": 4}


def test_train_ranks_yield_equal_full_batches(dataset):
    rows = dataset["rows"]
    batch_size, world_size = 5, 2  # 6 samples per rank: one full batch per epoch, the rest streams on
    loaders = [DaliShardLoader(dataset["shards"], batch_size, SAMPLER, rank, world_size, device="cpu", seed=3,
                               train=True) for rank in range(world_size)]
    assert len(loaders[0]) == len(loaders[1]) == 12 // world_size // batch_size
    indices_by_epoch = collections.defaultdict(dict)
    for epoch in range(3):
        for rank, loader in enumerate(loaders):
            batches = list(loader)
            assert len(batches) == len(loader)
            for batch in batches:
                assert len(check_batch(batch, rows, train=True)) == batch_size
                for number, key in enumerate(batch["key"]):
                    indices_by_epoch[key][epoch] = tuple(batch["indices"][number].tolist())
    # Training jitters the uniform positions: a long clip seen twice is not always sampled the same way.
    long_keys_seen_twice = [key for key, by_epoch in indices_by_epoch.items()
                            if key.startswith("long_") and len(by_epoch) > 1]
    assert any(len(set(indices_by_epoch[key].values())) > 1 for key in long_keys_seen_twice)


def test_mixed_resolutions_need_resize(dataset, tmp_path):
    rows = list(make_rows(tmp_path / "wide", "wide", count=2, frames=6, width=80, height=48, seed=4, gop=6))
    rows += [row for key, row in dataset["rows"].items() if key.startswith("long_")][:2]
    write_shards(rows, tmp_path / "shards", progress=False)
    shard_paths = sorted(str(path) for path in (tmp_path / "shards").glob("*.tar"))
    with pytest.raises(DfdError, match="videos of 2 sizes .* set data.dali_canvas"):
        next(iter(DaliShardLoader(shard_paths, 4, SAMPLER, device="cpu", train=False)))
    batch = next(iter(DaliShardLoader(shard_paths, 4, SAMPLER, device="cpu", train=False, resize=(32, 40))))
    assert batch["frames"].shape == (4, NUM_FRAMES, 32, 40, 3)


def test_h264_shards_are_refused_on_cpu(tmp_path):
    synthesize(tmp_path / "h264", count=2, frames=6, width=WIDTH, height=HEIGHT, codec="h264", progress=False)
    rows, _ = build_manifest("folder", tmp_path / "h264", val_fraction=0.0, test_fraction=0.0, progress=False)
    write_shards(rows, tmp_path / "shards", progress=False)
    shard_paths = sorted(str(path) for path in (tmp_path / "shards").glob("*.tar"))
    with pytest.raises(DfdError, match="is a h264 video; DALI decodes only VP8/VP9/MJPEG on the CPU"):
        DaliShardLoader(shard_paths, 2, SAMPLER, device="cpu")


def test_still_images_in_shards_are_refused(dataset, tmp_path):
    from PIL import Image

    rows = [row for key, row in dataset["rows"].items() if key.startswith("long_")][:2]
    (tmp_path / "stills/fake/p9").mkdir(parents=True)
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)).save(tmp_path / "stills/fake/p9/face.jpg")
    still_rows, _ = build_manifest("folder", tmp_path / "stills", val_fraction=0.0, test_fraction=0.0, progress=False)
    write_shards(rows + still_rows, tmp_path / "shards", progress=False)
    shard_paths = sorted(str(path) for path in (tmp_path / "shards").glob("*.tar"))
    with pytest.raises(DfdError, match="has members jpg, json; the dali loader needs a video"):
        DaliShardLoader(shard_paths, 2, SAMPLER, device="cpu")
