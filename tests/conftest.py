import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("DFDTRAIN_FIXTURES", REPO.parent / "shared" / "fixtures"))
# A small real H.264 clip (FF++ c40, 390 frames, ~190 KB) used to populate generated dataset trees.
SMALL_CLIP = FIXTURES / "ffpp/original_sequences/youtube/c40/videos/183.mp4"


@pytest.fixture(scope="session")
def fixtures():
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES} (set DFDTRAIN_FIXTURES)")
    return FIXTURES


def place_video(path, source=SMALL_CLIP):
    """Put a real video at ``path`` (a copy: tests must never write into the shared fixtures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


# 6 real FF++ c40 videos (4 real, 2 fake, ~1.5 MB) as a folder dataset: at 600K a shard, enough shards that each
# of 2 parts writes at least one
SIX_VIDEOS = {**{f"real/{name}.mp4": f"original_sequences/youtube/c40/videos/{name}.mp4"
                 for name in ("183", "253", "469", "481")},
              **{f"fake/{name}.mp4": f"manipulated_sequences/Deepfakes/c40/videos/{name}.mp4"
                 for name in ("183_253", "469_481")}}


def six_video_manifest(root, fixtures):
    """``SIX_VIDEOS`` copied to ``root/data`` and indexed (everything in train) into ``root/m.jsonl``; returns
    (manifest path, rows)."""
    from dfdtrain.data.ingest.datasets import IndexOptions
    from dfdtrain.data.ingest.manifest import build_manifest, write_manifest

    for path, source in SIX_VIDEOS.items():
        place_video(root / "data" / path, fixtures / "ffpp" / source)
    rows, summary = build_manifest("folder", root / "data", IndexOptions(), val_fraction=0, test_fraction=0,
                                   progress=False)
    write_manifest(root / "m.jsonl", rows, summary)
    return root / "m.jsonl", rows


def shards_by_name(out):
    """({shard name: (sha256, keys)}, index) of a finished shard folder."""
    import json

    index = json.loads((Path(out) / "index.json").read_text())
    return {shard["name"]: (shard["sha256"], shard["keys"]) for shard in index["shards"]}, index


def run_cli(*args, cwd=None):
    """Run ``python -m dfdtrain ARGS`` for real; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "dfdtrain", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def clip_spec(num_frames, image_size, crop="center", **options):
    """A resolved ClipSpec for loader tests: the uniform sampler, ImageNet normalisation (timm's default)."""
    from dfdtrain.config import ClipSpec, SamplerConfig

    return ClipSpec(sampler=SamplerConfig("uniform", num_frames), crop=crop, image_size=image_size,
                    **{**IMAGENET, **options})


def data_config(**options):
    """A DataConfig for loader tests: PyAV, decoding in the test's own process unless workers are asked for."""
    from dfdtrain.config import DataConfig

    return DataConfig(**{"decoder": "pyav", "num_workers": 0, **options})


def make_synth_shards(root, count, frames, val_fraction, target_bytes, seed, width=64, height=64, codec="h264"):
    """Real shards of generated clips: synth -> folder index (no test split) -> shard. Returns the shard folder."""
    from dfdtrain.data.ingest.manifest import build_manifest, write_manifest
    from dfdtrain.data.shards.writer import write_shards
    from dfdtrain.demo.synth import synthesize

    root = Path(root)
    synthesize(root / "data", count=count, frames=frames, width=width, height=height, codec=codec, seed=seed,
               progress=False)
    rows, summary = build_manifest("folder", root / "data", val_fraction=val_fraction, test_fraction=0,
                                   progress=False)
    write_manifest(root / "m.jsonl", rows, summary)
    write_shards(root / "m.jsonl", root / "shards", target_bytes=target_bytes, progress=False)
    return root / "shards"


def train_tiny(run_dir, shards, *overrides):
    """``dfdtrain train`` for real, 1 epoch of a tiny detector (1 process, DDP engine) on ``shards``' train/val
    tars; ``overrides`` add to or replace the defaults. Returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "dfdtrain", "train", "--quiet", f"run_dir={run_dir}", "train.engine=ddp",
         f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
         "model.backbone=mobilenetv2_050", "model.head=gru", "model.head_options={hidden_size: 16, hidden: [8]}",
         "clip.sampler.num_frames=4", "clip.image_size=48", "data.decoder=pyav", "data.batch_size=2",
         "data.num_workers=0", "data.epoch_samples=8", "train.epochs=1", *overrides],
        capture_output=True, text=True, timeout=600)


def frames_by_key(loader):
    """{video key: its frames} over one pass of a loader."""
    return {key: frames for batch in loader for key, frames in zip(batch["key"], batch["frames"])}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small detector trained for real (1 epoch, 1 process, DDP engine) on synth shards: its run directory."""
    root = tmp_path_factory.mktemp("trained")
    shards = make_synth_shards(root, count=12, frames=8, val_fraction=0.34, target_bytes=60_000, seed=11)
    run_dir = root / "run"
    result = train_tiny(run_dir, shards, "clip.crop=face")
    if result.returncode != 0:
        pytest.fail(f"training the test detector failed: {result.stderr[-2000:]}")
    return run_dir


def write_garbage_shard(path, count, split):
    """A real tar of ``count`` samples whose videos are garbage bytes behind an MP4 signature (undecodable)."""
    import json

    import webdataset as wds

    with wds.TarWriter(str(path)) as writer:
        for number in range(count):
            meta = {"key": f"garbage{number}", "label": number % 2, "frames": 24, "split": split}
            writer.write({"__key__": f"garbage{number}", "mp4": b"\x00\x00\x00\x18ftypisom" + b"\x07" * 300,
                          "json": json.dumps(meta).encode()})
    return path


def live_processes():
    """{pid: (ppid, start time, command line)} of every live process (a zombie is dead: it is left out)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()  # [state, ppid, ...]
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), fields[19], cmdline)
    return found


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory):
    """16 generated clips (8 frames) in train/val shards, for the training-engine and run-safety tests."""
    return make_synth_shards(tmp_path_factory.mktemp("train"), count=16, frames=8, val_fraction=0.25,
                             target_bytes=60_000, seed=3)


@pytest.fixture(scope="session")
def ffpp_shards(tmp_path_factory, fixtures):
    """Real FF++ shards with a ``method`` field: the YouTube pair 183/253, its 2 reals and its fakes by each of
    the 4 manipulation methods (a whole leakage group, and few videos: decoding full-size clips is slow)."""
    from dfdtrain.data.ingest.datasets import IndexOptions
    from dfdtrain.data.ingest.manifest import build_manifest
    from dfdtrain.data.shards.writer import write_shards

    root = tmp_path_factory.mktemp("ffpp_eval")
    rows, _ = build_manifest("ffpp", fixtures / "ffpp", IndexOptions(ffpp_splits=str(fixtures / "labels/ffpp")),
                             progress=False)
    rows = [row for row in rows if row["group"] == "ffpp:183-253"]
    write_shards(rows, root / "shards", target_bytes=2_000_000, progress=False)
    return root / "shards"


# `dfdtrain demo` made smaller for the test suite (the README's full run is test_demo's): fewer, shorter clips and one
# training process on the DDP engine (no DeepSpeed op to build); the same generator, backbone, head, input and
# optimiser (configs/demo.yaml)
SMALL_DEMO = ("--count", "96", "--frames", "12", "--nproc", "1", "train.engine=ddp", "train.epochs=8",
              "data.epoch_samples=128")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A detector trained by `dfdtrain demo` for real (SMALL_DEMO): the demo's report.json (``checkpoint``: the best
    checkpoint, ``data``: the generated clips)."""
    import json

    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run_cli("demo", "--out", out, "--quiet", "--json", *SMALL_DEMO)
    if result.returncode != 0:
        pytest.fail(f"the demo training failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)
