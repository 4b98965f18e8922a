"""Mixed training sets (data.train_sources): shares by weight, disjoint shards over 2 real ranks x workers with
their counts added up, a resumed epoch's draws, one-line config errors, and a real training run's report.

The draws are checked on embedding shards (real webdataset tars of tiny .npy features: the loader's full path,
workers included, without decoding video); the training run uses real video shards.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from dfdtrain.config import DataConfig, load_config
from dfdtrain.core.errors import DfdError
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.loading.sources import epoch_sources

WEIGHTS = (0.7, 0.3)


def write_embedding_shards(folder, prefix, shards, per_shard):
    """``shards`` real tars of ``per_shard`` samples each: KEY.npy (2 x 4 features) + KEY.json (label, mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{shard:06d}.tar")) as writer:
            for item in range(per_shard):
                key = f"{prefix}_{shard}_{item}"
                buffer = io.BytesIO()
                np.save(buffer, np.full((2, 4), shard, dtype=np.float32))
                meta = {"key": key, "label": item % 2, "frames": 2, "mask": [True, True], "split": "train"}
                writer.write({"__key__": key, "npy": buffer.getvalue(), "json": json.dumps(meta).encode()})
    return f"{folder}/{prefix}-*.tar"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Source 0: 6 shards x 20 samples; source 1: 4 shards x 9 samples, so it runs out and is re-read many times in
    an epoch of 800. (Embeddings: a synthesis tag is refused there; test_synthesis_loader reads video sources.)"""
    root = tmp_path_factory.mktemp("sources")
    return [{"shards": write_embedding_shards(root / "a", "a", 6, 20), "weight": WEIGHTS[0]},
            {"shards": write_embedding_shards(root / "b", "b", 4, 9), "weight": WEIGHTS[1]}]


def mixed(sources, **options):
    return DataConfig(**{"source": "embeddings", "train_sources": sources, "batch_size": 8, "num_workers": 2,
                         "epoch_samples": 800, **options})


def drawn(loader):
    return [(meta["source"], meta["key"], meta["shard"], meta["synthesis"])
            for batch in loader for meta in batch["meta"]]


def test_a_mixed_epoch_draws_each_source_within_5_percent_of_its_weight(sources):
    loader = VideoLoader(None, None, mixed(sources), train=True, rank=0, world_size=1, seed=3)
    samples = drawn(loader)
    assert len(samples) == len(loader) * 8 == 800
    for index, weight in enumerate(WEIGHTS):
        share = sum(source == index for source, *_ in samples) / len(samples)
        assert abs(share - weight) <= 0.05 * weight, (index, share)
    assert {synthesis for _, _, _, synthesis in samples} == {""}
    assert loader.source_tally.counts == [sum(source == index for source, *_ in samples) for index in (0, 1)]
    # one process: epoch_sources is this rank's counts, as the report holds them
    entries = epoch_sources(loader)
    assert [entry["samples"] for entry in entries] == loader.source_tally.counts
    assert entries[1]["synthesis"] == "" and entries[1]["shards"] == sources[1]["shards"]


def test_a_resumed_epoch_draws_the_same_sequence(sources):
    data = mixed(sources, epoch_samples=96)
    first = drawn(VideoLoader(None, None, data, train=True, rank=1, world_size=2, seed=3))
    again = VideoLoader(None, None, data, train=True, rank=1, world_size=2, seed=3)
    assert drawn(again) == first  # a resumed run rebuilds its loader: the same (seed, epoch, rank) draws
    again.set_epoch(1)
    assert drawn(again) != first
    assert drawn(VideoLoader(None, None, data, train=True, rank=0, world_size=2, seed=3)) != first


def test_two_ranks_and_their_workers_read_disjoint_shards_and_the_counts_add_up(sources, tmp_path):
    from support import torchrun, free_port

    out = tmp_path / "ranks.json"
    result = torchrun(2, __file__, json.dumps(sources), out, port=free_port(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    counts, total = [rank["counts"] for rank in ranks["ranks"]], ranks["total"]
    assert [entry["samples"] for entry in total] == [counts[0][0] + counts[1][0], counts[0][1] + counts[1][1]]
    assert sum(entry["samples"] for entry in total) == 2 * ranks["len"] * 8
    for index, weight in enumerate(WEIGHTS):
        assert abs(total[index]["share"] - weight) <= 0.05 * weight
        urls = sorted(str(path) for path in Path(sources[index]["shards"]).parent.glob("*.tar"))
        for rank, seen in enumerate(ranks["ranks"]):
            shards = set(seen["shards"][str(index)])
            # 2 ranks x 2 workers: slot rank*2 + worker reads shards slot::4, and no other
            assert shards and shards <= set(urls[2 * rank::4]) | set(urls[2 * rank + 1::4]), (index, rank)
        assert not set(ranks["ranks"][0]["shards"][str(index)]) & set(ranks["ranks"][1]["shards"][str(index)])


@pytest.mark.parametrize("overrides, message", [
    (["data.train_sources=[{shards: a/*.tar, weigth: 1}]"], "'data.train_sources[0].weigth' (did you mean 'weight'?)"),
    (["data.train_sources=[{shards: a/*.tar}, {weight: 1}]"], "'data.train_sources[1].shards' is required"),
    (["data.train_sources=[{shards: a/*.tar, weight: 0}]"], "'data.train_sources[0].weight' must be > 0, not 0.0"),
    (["data.train_sources=[{shards: a/*.tar, weight: .nan}]"], "'data.train_sources[0].weight' must be a finite"),
    (["data.train_sources=[{shards: a/*.tar, synthesis: sbx}]"], "'data.train_sources[0].synthesis' must be '' "),
    (["data.train_sources=[a/*.tar]"], "'data.train_sources[0]' must be a mapping"),
    (["data.train_shards=b/*.tar", "data.train_sources=[{shards: a/*.tar}]"],
     "'data.train_sources' and data.train_shards are both set"),
])
def test_config_errors_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(DfdError) as raised:
        load_config(overrides=overrides)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_source_matching_no_shard_is_one_line(tmp_path):
    data = mixed([{"shards": f"{tmp_path}/none-*.tar"}])
    with pytest.raises(DfdError, match=r"^data\.train_sources\[0\]\.shards: ") as raised:
        VideoLoader(None, None, data, train=True, rank=0, world_size=1)
    assert "\n" not in str(raised.value)


def test_a_training_run_reports_each_source(small_shards, tmp_path):
    from support import train_tiny

    train = sorted(small_shards.glob("train-*.tar"))
    assert len(train) >= 2
    first = train[0]
    rest = str(train[1]) if len(train) == 2 else "{" + ",".join(str(path) for path in train[1:]) + "}"
    result = train_tiny(tmp_path / "run", small_shards, "data.train_shards=", "data.epoch_samples=16",
                        f"data.train_sources=[{{shards: '{first}', weight: 1}}, {{shards: '{rest}', weight: 3}}]")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    entries = report["train_sources"]
    assert [(entry["source"], entry["weight"], entry["synthesis"]) for entry in entries] == [(0, 1.0, ""), (1, 3.0, "")]
    assert sum(entry["samples"] for entry in entries) == 16 and abs(entries[0]["samples"] - 4) <= 1  # 16 x 1/4
    assert entries[0]["shards"] == str(first) and abs(sum(entry["share"] for entry in entries) - 1) < 1e-9
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [row["train_sources"] for row in rows if "train_sources" in row]
    assert logged == [{str(entry["source"]): {"samples": entry["samples"], "share": entry["share"]}
                       for entry in entries}]


# ---------------------------------------------------------------------------------------------- the 2-rank job
def rank_job(sources, out_path):
    """Under torchrun (2 processes, gloo): one mixed epoch per rank; rank 0 writes what each rank read, its
    counts and epoch_sources' sum."""
    import torch.distributed as dist

    from dfdtrain.core.distributed import gather_to_rank0

    dist.init_process_group("gloo")
    loader = VideoLoader(None, None, mixed(json.loads(sources), epoch_samples=320), train=True, seed=5)
    shards = {"0": set(), "1": set()}
    for batch in loader:
        for meta in batch["meta"]:
            shards[str(meta["source"])].add(meta["shard"])
        dist.all_reduce(torch.ones(1))  # a collective per step, as DDP's: unequal step counts would hang
    total = epoch_sources(loader)
    ranks = gather_to_rank0([{"counts": loader.source_tally.counts,
                              "shards": {index: sorted(urls) for index, urls in shards.items()}}])
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps({"ranks": ranks, "total": total, "len": len(loader)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    rank_job(*sys.argv[1:])


def test_the_validation_overlap_and_the_protocols_leakage_check_see_every_training_source(sources):
    from dfdtrain.commands.train import validation_overlap
    from dfdtrain.evaluation.protocol import run_data

    line = validation_overlap(mixed(sources, val_shards=sources[1]["shards"]))
    assert line.startswith(f"data.val_shards ({sources[1]['shards']}) shares 36 videos") and "\n" not in line
    assert f"with data.train_sources ({sources[0]['shards']}, {sources[1]['shards']})" in line
    assert validation_overlap(mixed(sources[:1], val_shards=sources[1]["shards"])) is None
    assert run_data({"train_sources": sources, "val_shards": "val-*.tar"}) == [
        ("train_sources[0].shards", "training source 0", sources[0]["shards"]),
        ("train_sources[1].shards", "training source 1", sources[1]["shards"]),
        ("val_shards", "validation", "val-*.tar")]
    assert run_data({"train_shards": "train-*.tar"})[0] == ("train_shards", "training", "train-*.tar")
