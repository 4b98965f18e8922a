"""What tests share: paths, the real fixtures, the CLI runner, generated shards and small helpers (plain
functions; fixtures live in conftest.py)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dfdtrain.data.decode.video import read_frames
from dfdtrain.demo.encode import encode_video

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("DFDTRAIN_FIXTURES", REPO.parent / "shared" / "fixtures"))
# A small real H.264 clip (FF++ c40, 390 frames, ~190 KB) used to populate generated dataset trees.
SMALL_CLIP = FIXTURES / "ffpp/original_sequences/youtube/c40/videos/183.mp4"
EXTENSIONS = REPO / ".cache" / "torch_extensions"  # DeepSpeed JIT-builds a small CPU comm op once (~65 s)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TESTS = Path(__file__).resolve().parent
ENGINE_JOB, LOADER_JOB = TESTS / "dist_engine_job.py", TESTS / "dist_loader_job.py"  # 2-process jobs tests start


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


# `dfdtrain demo` made smaller for the test suite (the README's full run is test_demo's): fewer, shorter clips and one
# training process on the DDP engine (no DeepSpeed op to build); the same generator, backbone, head, input and
# optimiser (configs/demo.yaml)
SMALL_DEMO = ("--count", "96", "--frames", "12", "--nproc", "1", "train.engine=ddp", "train.epochs=8",
              "data.epoch_samples=128")


def environment():
    return {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS), "OMP_NUM_THREADS": "1"}


def torchrun(nproc, *args, port, timeout=600, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
               *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), **kwargs)


def train_args(shards, run_dir, *extra):
    return ["-m", "dfdtrain", "train", "--quiet", f"run_dir={run_dir}", f"data.train_shards={shards}/train-*.tar",
            f"data.val_shards={shards}/val-*.tar", "model.backbone=mobilenetv2_050", "model.head=gru",
            "model.head_options={hidden_size: 16, hidden: [8], dropout: 0.1}", "clip.sampler.num_frames=4",
            "clip.image_size=32", "clip.crop=center", "data.decoder=pyav", "data.batch_size=2", "data.num_workers=1",
            "data.epoch_samples=16", "train.epochs=3", "train.log_every=1", "optim.lr=0.003", *extra]


def constant_bundle(run_dir, out, logit=0.5, temperature=0.46, threshold=0.7503):
    """A bundle of the trained detector that gives every video and every frame (step) the same ``logit`` (its head's
    last layer zeroed, the bias set), calibrated like the issue's detector: T 0.46 and threshold 0.7503 by eer.
    Raw, every score is sigmoid(0.5) = 0.6225, above 0.5; calibrated, sigmoid(0.5 / 0.46) = 0.7478, just below the
    threshold: the head calls every video REAL."""
    import torch
    from safetensors.torch import save_file

    from dfdtrain.metrics.calibration import Calibration
    from dfdtrain.models.bundle import BUNDLE_WEIGHTS, calibrated, load_detector, write_settings

    model, settings = load_detector(run_dir)
    last = [module for module in model.head.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)
    out.mkdir(parents=True)
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(out / BUNDLE_WEIGHTS))
    calibration = Calibration(temperature=temperature, threshold_rule="eer", fitted_on="validation after epoch 1",
                              videos=40, nll_raw=0.69, nll_calibrated=0.68, ece_raw=0.2, ece_calibrated=0.1,
                              threshold=threshold)
    write_settings(calibrated(settings, calibration), out)
    return out


def subset_shards(run_dir, out, choose):
    """Shards (split val) of the videos of the trained run's index that ``choose(rows)`` returns."""
    from dfdtrain.data.shards.writer import write_shards

    rows = [json.loads(line) for line in (run_dir.parent / "m.jsonl").read_text().splitlines() if line.strip()]
    rows = [{**row, "split": "val"} for row in choose([row for row in rows if isinstance(row, dict) and "key" in row])]
    write_shards(rows, out, target_bytes=10_000_000, progress=False)
    return out


def one_group(rows):
    """The real and the fake video of one person (one group: a 2-video, 1-group set)."""
    group = sorted(row["group"] for row in rows)[0]
    chosen = sorted((row for row in rows if row["group"] == group), key=lambda row: row["label"])
    assert [row["label"] for row in chosen] == [0, 1]
    return chosen


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,900"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def no_face_clip(path, frames=40, width=160, height=128):
    """A generated clip with no face: colour gradients drifting over the frame."""
    ys, xs = np.mgrid[0:height, 0:width]
    pictures = [np.stack([(xs + 3 * t) % 256, (ys + 2 * t) % 256, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
                for t in range(frames)]
    encode_video(str(path), pictures, "h264", width, height, 25, 12)
    return path


MEAN_TOLERANCE = 2.5  # mean |DALI - PyAV| over all pixels of one read, in 0..255 units


P99_TOLERANCE = 20.0


def assert_close_to_pyav(frames, path, indices, frame_count):
    """Compare with PyAV's frames; returns (mean, p99, max) of the absolute difference."""
    expected = read_frames(path, indices)
    assert frames.shape == expected.shape and frames.dtype == np.uint8
    difference = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
    mean, p99, largest = difference.mean(), np.percentile(difference, 99), int(difference.max())
    assert mean < MEAN_TOLERANCE and p99 <= P99_TOLERANCE, (path, indices, mean, p99, largest)
    # The right frames, not just similar ones: each is nearest to PyAV's frame of the same index.
    all_frames = read_frames(path, range(frame_count)).astype(np.float32)
    distances = np.abs(frames.astype(np.float32)[:, None] - all_frames[None]).mean(axis=(2, 3, 4))
    assert list(distances.argmin(axis=1)) == list(indices), (path, indices)
    return mean, p99, largest


def assert_valid_png(path):
    assert path.is_file(), path
    assert 5_000 < path.stat().st_size < 2_000_000, (path, path.stat().st_size)
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert 300 <= width <= 2000 and 300 <= height <= 2000, (path, image.size)


def read_back(shard_paths):
    """Every sample of the shards through webdataset's own reader: {key: (video bytes, json)}."""
    samples = {}
    for sample in wds.WebDataset([str(path) for path in shard_paths], shardshuffle=False):
        video_ext = next(ext for ext in sample if ext not in ("__key__", "__url__", "__local_path__", "json"))
        assert sample["__key__"] not in samples
        samples[sample["__key__"]] = (sample[video_ext], json.loads(sample["json"]))
    return samples


def one_process_shards(manifest, out):
    from dfdtrain.data.shards.writer import write_shards

    write_shards(manifest, out, target_bytes=600_000, progress=False)
    shards, _ = shards_by_name(out)
    assert len(shards) >= 2, shards  # so each of 2 parts has a shard to write
    return shards
