"""Streaming loaders on real shards: batches, broken samples, and 2-rank gloo runs over uneven shards."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds

from conftest import frames_by_key, make_synth_shards
from dfdtrain.data.loader import LoaderConfig, VideoLoader, expand_shards, label_counts, positive_class_weight
from dfdtrain.data.sampler import SamplerConfig
from dfdtrain.fileio import read_json

HERE = Path(__file__).resolve().parent


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
    config = LoaderConfig(shards=str(shards / "train-*.tar"), batch_size=3, num_workers=0,
                          sampler=SamplerConfig("uniform", 6), image_size=48, crop="center")
    loader = VideoLoader(config, train=True)
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
    config = LoaderConfig(shards=str(shards / "val-*.tar"), batch_size=4, num_workers=0,
                          sampler=SamplerConfig("uniform", 16), image_size=32, crop="center")
    batch = next(iter(VideoLoader(config, train=False)))
    assert batch["mask"][:, :12].all() and not batch["mask"][:, 12:].any()
    normalised_zero = (0 - 0.485) / 0.229
    assert torch.allclose(batch["frames"][:, 12:, 0], torch.full_like(batch["frames"][:, 12:, 0], normalised_zero))


def test_evaluation_sees_every_video_once_and_counts_the_broken_one(shards):
    config = LoaderConfig(shards=[str(shards / "val-*.tar"), str(shards / "broken-*.tar")], batch_size=2,
                          num_workers=2, sampler=SamplerConfig("uniform", 4), image_size=32, crop="center")
    loader = VideoLoader(config, train=False)
    batches = list(loader)
    keys = [key for batch in batches for key in batch["key"]]
    val_keys = {json.loads(sample["json"])["key"] for sample in
                wds.WebDataset(expand_shards(str(shards / "val-*.tar")), shardshuffle=False)}
    assert sorted(keys) == sorted(val_keys | {"lying_count"})
    lying = next(meta for batch in batches for meta in batch["meta"] if meta["key"] == "lying_count")
    assert lying["frames"] == 12 and lying["frame_indices"] == [1, 4, 7, 10]
    assert [(item["key"], item["reason"]) for item in loader.skipped] == [("broken_clip", "undecodable")]


def test_class_counts_and_balancing(shards):
    urls = expand_shards(str(shards / "train-*.tar"))
    counts = label_counts(urls)
    assert sum(counts.values()) == read_json(shards / "index.json")["splits"]["train"]["samples"]
    assert positive_class_weight(urls) == pytest.approx(counts[0] / counts[1])
    config = LoaderConfig(shards=urls, batch_size=2, num_workers=0, sampler=SamplerConfig("uniform", 2),
                          image_size=16, crop="center", class_balance=True, epoch_samples=200)
    labels = [label for batch in VideoLoader(config, train=True) for label in batch["label"].tolist()]
    assert len(labels) == 200 and 0.35 < sum(labels) / len(labels) < 0.65


@pytest.mark.parametrize("workers", [0, 2])
def test_two_rank_gloo_run_over_uneven_shards(shards, tmp_path, workers):
    train = sorted(str(path) for path in shards.glob("train-*.tar"))
    evaluation = sorted(str(path) for path in shards.glob("val-*.tar")) + [str(shards / "broken-000000.tar")]
    assert len(train) < 2 * 2 or workers == 0  # fewer train shards than ranks x workers, on purpose
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + workers),
         str(HERE / "dist_loader_job.py"), ",".join(train), ",".join(evaluation), str(out), str(workers)],
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
    import dataclasses

    make_synth_shards(tmp_path, count=6, frames=12, val_fraction=0, target_bytes=40_000, seed=4, height=48,
                      codec="vp9")
    config = LoaderConfig(shards=str(tmp_path / "shards" / "train-*.tar"), batch_size=4, num_workers=0,
                          sampler=SamplerConfig("uniform", 5), image_size=32, crop="center")
    pyav = frames_by_key(VideoLoader(config, train=False))
    dali_loader = VideoLoader(dataclasses.replace(config, decoder="dali"), train=False)
    assert dali_loader.dali is not None
    dali = frames_by_key(dali_loader)
    assert sorted(dali) == sorted(pyav) and len(dali) == 6
    for key in pyav:  # DALI's YUV->RGB differs by ~1.6/255 on average (bilinear vs nearest chroma)
        assert (dali[key] - pyav[key]).abs().mean() < 0.06, key
    train = VideoLoader(dataclasses.replace(config, decoder="dali"), train=True)
    batches = list(train)
    assert len(batches) == len(train) and batches[0]["frames"].shape == (4, 5, 3, 32, 32)
