"""Loader throughput: shards -> normalised batches on the device, samples/s per process by worker count, shard
streaming vs one file per video.

Data: dfdtrain's own generated clips (synth -> index -> shard, H.264 with a keyframe every 12 frames). Methods:
  shards  the training loader (``VideoLoader``, train=True): resampled shard stream, shuffle buffer, PyAV
          decode of the sampled frames, crop and resize, batching in DataLoader workers; then to the device
          and normalise in the main process;
  files   one file per video (the reference notebooks' layout): a map-style dataset that opens each video's
          own file in random order, then the same ``ClipDecoder``, ``collate`` and ``model_input`` (the clip
          contract, ``dfdtrain.data.loading.clips``);
  dali    (GPU only) the training loader with ``decoder=dali``: DALI reads the shards and decodes with NVDEC;
  s3      the shards method over the same shards in a real S3 server on loopback (SeaweedFS, ``weed``: started
          here; skipped with a note when it is not installed), streamed with ranged GETs (``dfdtrain.data.storage``);
  http    the same over Python's HTTP file server on loopback.
Synthesis (``synthesis`` in the JSON): the shards method with 1 worker (one decoding core) on face-clip shards
with dlib68 landmarks of real FF++ fixture videos (sharded here: ``--fixtures``), the one source's synthesis off,
``sbi`` and ``vb`` (data.synthesis_fraction 0.5: half the samples blended), samples/s and each one's ratio to off
(the issue's goal: >= 0.7). Faces are stored at the store's default size (256 px): what a clip costs to decode
depends on it, and a blend costs what the model's input size says. Skipped with a note when the fixtures or
dlib/facenet are not here.
Degradation (``degradation`` in the JSON): the shards method with 1 worker on the generated clips, training's
worker-side augmentation (``data.augment``'s codec / perturb, ``dfdtrain.data.loading.degrade``) off, ``codec`` 1.0
(every clip re-encoded by libx264, CRF 23..40), ``codec`` 0.3 and ``perturb`` 1.0 (one DeeperForensics type and
level per clip); the main-process augmentations zeroed in every row, so the ratios to off are the workers' cost;
with ``encode_ms``, one T x S x S clip through ``encode_frames_h264`` (1 thread) alone.
Each (method, workers) reads ``batches`` batches per repeat; the first batch's latency (worker start-up) is
reported apart and the rest gives samples/s; repeats are interleaved across methods and the median kept.
Augmentation is off in both methods (this compares data layout and decode; ``train.py`` runs the real loop).
The files sit in the page cache: the per-file cost here is open/read/seek on a local disk, the least it can be.

    python benchmarks/loader.py [--device auto] [--quick] [--out benchmarks/results/loader_cpu.json]
"""

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from common import (benchmark_parser, emit, envelope, make_synth_shards, median, progress, settings_for,
                    start_benchmark)
from dfdtrain.config import ClipSpec, DataConfig, SamplerConfig
from dfdtrain.data.faces.clip_options import FaceClipOptions
from dfdtrain.data.loading.clips import model_input
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.loading.stages import ClipDecoder, collate
from dfdtrain.testing.loopback import HttpServer, S3Server

# Data and loader sizes per mode. GPU: larger frames, more workers (a GPU host has more cores).
SETTINGS = {
    "quick": {"videos": 12, "video_frames": 36, "width": 96, "height": 96, "num_frames": 8, "image_size": 64,
              "batch_size": 2, "batches": 4, "workers": [0, 1], "repeats": 1},
    "cpu": {"videos": 24, "video_frames": 64, "width": 256, "height": 256, "num_frames": 16, "image_size": 224,
            "batch_size": 4, "batches": 8, "workers": [0, 1, 2], "repeats": 3},
    "cuda": {"videos": 64, "video_frames": 96, "width": 640, "height": 480, "num_frames": 16, "image_size": 224,
             "batch_size": 8, "batches": 16, "workers": [1, 2, 4, 8], "repeats": 3},
}


class VideoFiles(torch.utils.data.Dataset):
    """One file per video: each item opens and reads its own file, then the training loader's ClipDecoder."""

    def __init__(self, rows, clip, data):
        self.rows = rows
        self.clip_decoder = ClipDecoder(clip, data.decoder, data.face_track)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        path = Path(row["root"]) / row["path"]
        meta = {"label": row["label"], "frames": row["frames"], "width": row["width"], "height": row["height"]}
        sample = {"__key__": row["key"], path.suffix[1:]: path.read_bytes(), "meta": meta}
        return self.clip_decoder(sample, np.random.default_rng(index))  # train-mode sampling, as the shards


def collate_clips(clips):
    return collate(clips, [])


def file_batches(rows, clip, data, workers, batches, device, seed):
    """Normalised batches on the device from one file per video, in random order (with replacement)."""
    sampler = torch.utils.data.RandomSampler(rows, replacement=True, num_samples=batches * data.batch_size,
                                             generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(VideoFiles(rows, clip, data), batch_size=data.batch_size, sampler=sampler,
                                         num_workers=workers, collate_fn=collate_clips,
                                         pin_memory=device.type == "cuda")
    for raw in loader:
        yield {"frames": model_input(raw["frames"].to(device, non_blocking=True), clip),
               "mask": raw["mask"].to(device, non_blocking=True), "label": raw["label"].to(device), "key": raw["key"]}


def shard_batches(shards, clip, data, workers, device, epoch):
    loader = VideoLoader(shards, clip, dataclasses.replace(data, num_workers=workers), train=True, device=device,
                         rank=0, world_size=1)
    loader.set_epoch(epoch)
    return iter(loader)


def remote_shards(servers, shard_folder, shard_paths, scratch):
    """({"s3": urls, "http": urls}, notes): the shards served from loopback servers entered on ``servers``."""
    names = [Path(path).name for path in shard_paths]
    http = servers.enter_context(HttpServer(shard_folder))
    urls, notes = {"http": [f"{http.url}/{name}" for name in names]}, []
    try:
        s3 = servers.enter_context(S3Server(Path(scratch) / "weed"))
    except Exception as error:  # noqa: BLE001 (no weed binary, or it would not start: measure the rest)
        notes.append(f"s3 not measured: {error}")
        return urls, notes
    os.environ.update(s3.environment())  # this process and its loader workers read the endpoint from here
    s3.create_bucket("bench")
    s3.upload_folder(shard_folder, "s3://bench/shards")
    return {"s3": [f"s3://bench/shards/{name}" for name in names], **urls}, notes


SYNTHESIS_VIDEOS = ("469", "183", "253", "481")  # FF++ youtube reals among the fixtures


def synthesis_shards(fixtures, folder, videos):
    """Face-clip shards with landmarks (one track, the store's default size) of ``videos`` FF++ fixture reals, or
    (None, why not)."""
    try:
        from dfdtrain.data.faces.tracks import TrackOptions
        from dfdtrain.data.shards.writer import write_shards

        rows = [{"key": f"real{name}", "path": f"ffpp/original_sequences/youtube/c40/videos/{name}.mp4",
                 "root": str(fixtures), "label": 0, "dataset": "ffpp", "group": name, "split": "train"}
                for name in SYNTHESIS_VIDEOS[:videos]]
        missing = [row["path"] for row in rows if not (Path(fixtures) / row["path"]).is_file()]
        if missing:
            return None, f"synthesis not measured: fixtures missing ({missing[0]})"
        options = FaceClipOptions(landmarks="dlib68", tracks=TrackOptions(detect_every=10, max_tracks=1))
        write_shards(rows, Path(folder) / "faces", progress=False, store="faces", face_clip_options=options)
    except Exception as error:  # noqa: BLE001 (no dlib, no face detector: measure the rest)
        return None, f"synthesis not measured: {type(error).__name__}: {error}"
    return f"{folder}/faces/*.tar", None


def synthesis_rates(shards, clip, data, device, repeats):
    """{off, sbi, vb: samples/s (median), ratio_sbi, ratio_vb, repeats} with one decoding worker."""
    rates = {name: [] for name in ("off", "sbi", "vb")}
    for repeat in range(repeats):
        for name in rates:
            method_data = dataclasses.replace(data, num_workers=1, synthesis_fraction=0.5, train_sources=[
                {"shards": shards, "synthesis": "" if name == "off" else name}])
            loader = VideoLoader(None, clip, method_data, train=True, device=device, rank=0, world_size=1)
            loader.set_epoch(repeat)
            rates[name].append(round(read_epoch(iter(loader), device)[1], 3))
    result = {name: median(values) for name, values in rates.items()}
    return {**result, "ratio_sbi": round(result["sbi"] / result["off"], 3),
            "ratio_vb": round(result["vb"] / result["off"], 3), "workers": 1, "fraction": 0.5, "repeats": rates}


# data.augment for the degradation rows: every main-process augmentation off, the worker-side ones per row
QUIET_AUGMENT = {"enabled": True, "hflip": 0.0, "rotate": 0.0, "zoom": (1.0, 1.0), "translate": 0.0,
                 "brightness": 0.0, "contrast": 0.0, "jpeg": 0.0, "blur": 0.0, "noise": 0.0}
DEGRADATIONS = {"off": {}, "codec": {"codec": 1.0}, "codec_0.3": {"codec": 0.3}, "perturb": {"perturb": 1.0}}


def degradation_rates(shards, video, clip, data, device, repeats):
    """{off, codec, codec_0.3, perturb: samples/s (median), ratio_*: each / off, encode_ms, ...}, 1 worker."""
    from dfdtrain.data.perturb.video import encode_frames_h264

    rates = {name: [] for name in DEGRADATIONS}
    for repeat in range(repeats):
        for name, options in DEGRADATIONS.items():
            method_data = dataclasses.replace(data, num_workers=1, augment={**QUIET_AUGMENT, **options})
            loader = VideoLoader(shards, clip, method_data, train=True, device=device, rank=0, world_size=1)
            loader.set_epoch(repeat)
            rates[name].append(round(read_epoch(iter(loader), device)[1], 3))
    result = {name: median(values) for name, values in rates.items()}
    frames = sample_frames(video, clip.sampler.num_frames, clip.image_size)
    encode_frames_h264(frames, 30)  # warm-up
    timings = []
    for crf in (23, 30, 40) * 3:
        started = time.perf_counter()
        encode_frames_h264(frames, crf)
        timings.append(time.perf_counter() - started)
    return {**result, **{f"ratio_{name}": round(result[name] / result["off"], 3) for name in DEGRADATIONS
                         if name != "off"},
            "encode_ms": round(1000 * median(timings), 2), "encode_clip": list(frames.shape),
            "workers": 1, "repeats": rates}


def sample_frames(path, count, size):
    """The first ``count`` frames of the video at ``path``, centre-cropped to ``size`` (uint8 [T,S,S,3])."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(count), container.decode(video=0))]
    clip = np.stack(frames)
    top, left = max(0, (clip.shape[1] - size) // 2), max(0, (clip.shape[2] - size) // 2)
    return np.ascontiguousarray(clip[:, top:top + size, left:left + size])


def read_epoch(batches, device):
    """(seconds to the first batch, samples/s over the rest) of one pass."""
    started = time.perf_counter()
    first = next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - started
    samples, started = 0, time.perf_counter()
    for batch in batches:
        assert batch["frames"].device.type == device.type and batch["frames"].dtype == torch.float32
        samples += len(batch["key"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert samples > 0 and first["frames"].shape[0] > 0
    return first_s, samples / (time.perf_counter() - started)


def main(argv=None):
    parser = benchmark_parser(__doc__, "tiny clips, 0 and 1 workers, 1 repeat (CI)", fixtures=True)
    parser.add_argument("--repeats", type=int, default=0, help="passes per method and worker count (median)")
    args, started, device = start_benchmark(parser, argv)
    settings = settings_for(SETTINGS, args, device)
    workers = [count for count in settings["workers"] if count <= len(os.sched_getaffinity(0))]
    batch_size, batches = settings["batch_size"], settings["batches"]
    # what each video becomes: the training loader's clip, normalised with ImageNet's mean and std
    clip = ClipSpec(sampler=SamplerConfig("uniform", settings["num_frames"]), crop="face",
                    image_size=settings["image_size"], mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    with tempfile.TemporaryDirectory() as folder:
        shards, rows = make_synth_shards(folder, count=settings["videos"], frames=settings["video_frames"],
                                         width=settings["width"], height=settings["height"], val_fraction=0,
                                         target_bytes=256 * 1024)
        shard_paths = sorted(str(path) for path in shards.glob("train-*.tar"))
        # augmentation off: this compares data layout and decode
        data = DataConfig(batch_size=batch_size, decoder="pyav", epoch_samples=batches * batch_size,
                          shuffle_buffer=16, augment={"enabled": False})
        runs = [("shards", count) for count in workers] + [("files", count) for count in workers]
        if device.type == "cuda":
            runs.append(("dali", 0))  # DALI decodes in its own threads: no DataLoader workers
        with contextlib.ExitStack() as servers:
            remote_urls, remote_notes = remote_shards(servers, shards, shard_paths, folder)
            runs += [(method, count) for method in remote_urls for count in workers]
            times = {run: {"first_batch_s": [], "samples_per_s": []} for run in runs}
            for repeat in progress(range(settings["repeats"]), desc="loader", unit="repeat"):
                for method, count in runs:
                    if method == "files":
                        iterator = file_batches(rows, clip, data, count, batches, device, seed=repeat)
                    else:
                        method_data = dataclasses.replace(data, decoder="dali" if method == "dali" else "pyav")
                        iterator = shard_batches(remote_urls.get(method, shard_paths), clip, method_data, count,
                                                 device, epoch=repeat)
                    first_s, rate = read_epoch(iterator, device)
                    times[(method, count)]["first_batch_s"].append(round(first_s, 4))
                    times[(method, count)]["samples_per_s"].append(round(rate, 3))
        degradation = degradation_rates(shard_paths, Path(rows[0]["root"]) / rows[0]["path"], clip, data, device,
                                        settings["repeats"])
        face_shards, synthesis_note = synthesis_shards(args.fixtures, folder, 1 if args.quick else 4)
        synthesis = (synthesis_rates(face_shards, clip, data, device, settings["repeats"]) if face_shards
                     else {"skipped": synthesis_note})
        shard_bytes = sum(Path(path).stat().st_size for path in shard_paths)
        video_bytes = sum((Path(row["root"]) / row["path"]).stat().st_size for row in rows)
    results = [{"method": method, "workers": count, "samples_per_s": median(values["samples_per_s"]),
                "frames_per_s": round(median(values["samples_per_s"]) * settings["num_frames"], 2),
                "first_batch_s": median(values["first_batch_s"]), "repeats": values}
               for (method, count), values in times.items()]
    rate = {(row["method"], row["workers"]): row["samples_per_s"] for row in results}
    ratios = {f"shards_over_files_{count}_workers": round(rate[("shards", count)] / rate[("files", count)], 3)
              for count in workers}
    for method in ("shards", "files"):
        for count in workers[1:]:
            ratios[f"{method}_{count}_workers_over_{workers[0]}"] = round(rate[(method, count)] / rate[(method, workers[0])], 3)
    for method in ("s3", "http"):
        for count in workers:
            if (method, count) in rate:
                ratios[f"{method}_over_local_shards_{count}_workers"] = round(rate[(method, count)] /
                                                                              rate[("shards", count)], 3)
    if device.type == "cuda":
        ratios["dali_over_best_shards"] = round(rate[("dali", 0)] / max(rate[("shards", count)] for count in workers), 3)
    result = envelope(
        "loader", device,
        {**settings, "workers": workers, "quick": args.quick, "crop": "face (no boxes: centre square)",
         "augment": False, "codec": "h264 (synth, keyframe every 12 frames)", "processes": 1},
        started,
        data={"videos": len(rows), "shards": len(shard_paths), "shard_bytes": shard_bytes, "video_file_bytes": video_bytes},
        results=results, ratios=ratios, synthesis=synthesis, degradation=degradation,
        notes=[*remote_notes, *([synthesis_note] if synthesis_note else []),
               "synthesis: samples/s of the training loader with 1 decoding worker on face-clip shards with "
               f"landmarks of FF++ fixture reals ({FaceClipOptions().size} px faces, the store's default, resized to "
               "image_size), synthesis off / sbi / vb on "
               "half the samples; ratio_* = on / off (goal >= 0.7).",
               "degradation: samples/s of the training loader with 1 decoding worker on the generated clips, "
               "data.augment.codec 1.0 / 0.3 (libx264 re-encode of the sampled frames at CRF 23..40, 1 thread) "
               "and perturb 1.0 (one DeeperForensics frame perturbation per clip) against neither; main-process "
               "augmentation off in every row; encode_ms: one clip through encode_frames_h264 alone.",
               "s3 and http stream the same shards from servers on loopback (no network latency or bandwidth "
               "limit; the servers run on the same cores as the loader): their ratio to local shards is the cost "
               "of the remote read path itself.","samples/s is per process (one loader); the scaling benchmark covers several processes.",
               "Files are in the page cache: on network storage the per-file open and seek cost of the files "
               "layout grows, the shards' sequential reads do not.",
               "On this CPU-only machine the workers share the cores with the main process, which "
               "normalises the batches; more workers than free cores cannot help."])
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
