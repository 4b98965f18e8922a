"""Sampled decode from shards of the real fixtures: DALI `mixed` (NVDEC) vs PyAV, originals and face clips, one run.

The fixture videos are sharded twice, as ``dfdtrain shard`` writes them (``write_shards`` of one folder manifest):
the original store (each file's own bytes) and the face store (track 0 cut to a square and re-encoded as a
short-GOP H.264 clip, FaceClipOptions defaults; MTCNN on the CPU). Every sample's video is then read from the tar
files, and the 16 frames of the uniform sampler's evaluation indices are decoded from its bytes in memory by
  pyav      the ``pyav`` backend (GOP-skipping PyAV, this machine's CPU threads), and
  dali_gpu  the ``dali`` backend on the GPU: ``fn.decoders.video`` with device ``mixed`` (NVDEC), the frames
            copied back to host memory as every backend returns them (with --device cuda, or auto on a GPU).
Each method reads each video once untimed (warm-up, pipeline build), then ``--repeats`` times, methods and
videos interleaved so that load changes hit them alike; medians. Ratios compare medians of this one run: per
store, PyAV's summed medians / DALI's (> 1: DALI is faster), and per method, originals / face clips. The two
decoders' frames are compared too (|DALI - PyAV| in 0..255 levels, mean and 99th percentile per read, against
tests/integration/test_dali.py's tolerance: DALI upsamples chroma bilinearly, PyAV nearest-neighbour).

The result is a ``decode`` benchmark result (its RESULTS.md renderer shows every video and store).

    python benchmarks/gpu/shard_decode.py [--device auto|cpu|cuda] [--quick] [--repeats 5] [--out FILE]
"""

import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))  # common.py: the envelope, devices and JSON out every benchmark shares

from common import (benchmark_parser, emit, envelope, error_line, first_frames, parse_arguments,  # noqa: E402
                    resolve_device)

NUM_FRAMES = 16
# A portrait DFDC clip (1080x1920, no rotation flag), two FF++ YouTube originals at 720p and a fake of theirs:
# all in the kit's carried fixtures (kit_carry.py FIXTURES).
VIDEOS = ["dfdc/dfdc_train_part_0/brtujopkby.mp4", "ffpp/original_sequences/youtube/c40/videos/183.mp4",
          "ffpp/original_sequences/youtube/c40/videos/253.mp4",
          "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"]
# --quick (the CPU dry run): the smallest fixture, cut to its first frames so that MTCNN has little to do
QUICK_VIDEOS = ["ffpp/original_sequences/youtube/c40/videos/183.mp4"]
QUICK_FRAMES = 48
# tests/integration/test_dali.py: DALI vs PyAV frames, mean |difference| < 2.5 and 99th percentile <= 20 (0..255 levels)
MEAN_TOLERANCE, P99_TOLERANCE = 2.5, 20.0


def folder_manifest(fixtures, relatives, folder, max_frames):
    """The videos as one folder dataset (real/ or fake/ by their fixture folder), all in train; returns the
    manifest's path and {manifest path of a video: its fixture path}."""
    from dfdtrain.data.ingest.datasets import IndexOptions
    from dfdtrain.data.ingest.manifest import build_manifest, write_manifest

    fixture_of = {}
    for number, relative in enumerate(relatives):
        path = f"{'fake' if 'manipulated' in relative else 'real'}/v{number:02d}_{Path(relative).name}"
        data = (fixtures / relative).read_bytes()
        if max_frames:
            data = first_frames(data, max_frames)
        (folder / "videos" / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / "videos" / path).write_bytes(data)
        fixture_of[path] = relative
    rows, summary = build_manifest("folder", folder / "videos", IndexOptions(), val_fraction=0, test_fraction=0,
                                   progress=False)
    write_manifest(folder / "manifest.jsonl", rows, summary)
    return folder / "manifest.jsonl", fixture_of


def shard_samples(shard_dir):
    """[(key, meta, {member extension: bytes})] of every sample in a shard folder's tar files."""
    samples = {}
    for tar_path in sorted(Path(shard_dir).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    key, extension = member.name.split(".", 1)  # our keys hold no dots
                    samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return [(key, json.loads(members.pop("json")), members) for key, members in sorted(samples.items())]


def reads_of(store, shard_dir, fixture_of):
    """One read per sample: (label, store, bytes, member name, frame count, width, height, codec, indices)."""
    from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices

    reads = []
    for key, meta, members in shard_samples(shard_dir):
        if store == "faces":
            track = meta["tracks"][0]  # what DALI's shard loader reads too (<key>.<ext> is track 0)
            extension, frames, width, height = track["member"], track["frames"], track["size"], track["size"]
        else:
            (extension,) = members
            frames, width, height = meta["frames"], meta["width"], meta["height"]
        indices, _ = sample_indices(frames, SamplerConfig(mode="uniform", num_frames=NUM_FRAMES))
        label = f"{'face clip' if store == 'faces' else 'original'}: {fixture_of[meta['path']]}"
        reads.append({"label": label, "store": store, "data": members[extension], "name": f"{key}.{extension}",
                      "frames": frames, "width": width, "height": height, "codec": meta["codec"],
                      "indices": [int(index) for index in indices]})
    return reads


def build_methods(device):
    """{method: decoder} for what this machine can run, and {method: reason} for the rest."""
    from dfdtrain.data.decode.decoders import build_decoder

    methods, unavailable = {"pyav": build_decoder("pyav")}, {}
    if device.type == "cuda":
        try:
            methods["dali_gpu"] = build_decoder("dali", device="gpu")
        except Exception as error:  # DfdError (nvidia.dali missing) or a DALI start-up failure: say which
            unavailable["dali_gpu"] = error_line(error)
    else:
        unavailable["dali_gpu"] = "no GPU (run with --device cuda on a GPU machine)"
    return methods, unavailable


def agreement(dali_frames, pyav_frames):
    """|DALI - PyAV| of one read in 0..255 levels: mean, 99th percentile, max, and the tolerance verdict."""
    if dali_frames.shape != pyav_frames.shape:  # a finding to report, not a reason to lose the timings
        return {"mean_abs": None, "p99_abs": None, "max_abs": None, "within_tolerance": False,
                "shapes": {"dali_gpu": list(dali_frames.shape), "pyav": list(pyav_frames.shape)}}
    difference = np.abs(dali_frames.astype(np.int16) - pyav_frames.astype(np.int16))
    mean, p99 = float(difference.mean()), float(np.percentile(difference, 99))
    return {"mean_abs": round(mean, 3), "p99_abs": p99, "max_abs": int(difference.max()),
            "within_tolerance": bool(mean < MEAN_TOLERANCE and p99 <= P99_TOLERANCE)}


def measure(reads, methods, repeats):
    """Median seconds per read and method (warm-up first, then interleaved repeats); frame agreement."""
    first = {}
    for read in reads:  # warm-up: thread pools, DALI pipeline build, NVDEC sessions
        for method, decoder in methods.items():
            frames = decoder.read(read["data"], read["indices"], name=read["name"])
            assert frames.shape[0] == len(read["indices"]), (read["label"], method, frames.shape)
            first[read["label"], method] = frames
    times = {(read["label"], method): [] for read in reads for method in methods}
    for _ in range(repeats):
        for read in reads:
            for method, decoder in methods.items():
                started = time.perf_counter()
                decoder.read(read["data"], read["indices"], name=read["name"])
                times[read["label"], method].append(time.perf_counter() - started)
    comparisons = []
    for read in reads:
        results = {}
        for method in methods:
            seconds = times[read["label"], method]
            median = statistics.median(seconds)
            results[method] = {"median_s": round(median, 5), "frames_per_s": round(len(read["indices"]) / median, 2),
                               "videos_per_s": round(1 / median, 3), "times_s": [round(value, 5) for value in seconds]}
        comparison = {"video": read["label"], "store": read["store"], "codec": read["codec"], "width": read["width"],
                      "height": read["height"], "frames": read["frames"], "bytes": len(read["data"]),
                      "indices": read["indices"], "methods": results, "ratios": {}}
        if "dali_gpu" in results:
            comparison["ratios"]["dali_gpu_speedup_over_pyav"] = round(
                results["pyav"]["median_s"] / results["dali_gpu"]["median_s"], 3)
            comparison["dali_vs_pyav"] = agreement(first[read["label"], "dali_gpu"], first[read["label"], "pyav"])
        comparisons.append(comparison)
    return comparisons


def store_totals(comparisons, methods):
    """Per store: summed medians per method and the DALI / PyAV ratio; per method: originals / face clips."""
    stores = {}
    for store in ("original", "faces"):
        chosen = [comparison for comparison in comparisons if comparison["store"] == store]
        totals = {method: round(sum(c["methods"][method]["median_s"] for c in chosen), 5) for method in methods}
        stores[store] = {"videos": len(chosen), "bytes": sum(c["bytes"] for c in chosen),
                         "decode_16_s_total": totals}
        if "dali_gpu" in totals:
            stores[store]["dali_gpu_speedup_over_pyav"] = round(totals["pyav"] / totals["dali_gpu"], 3)
            means = [c["dali_vs_pyav"]["mean_abs"] for c in chosen]
            stores[store]["dali_vs_pyav_mean_abs_max"] = None if None in means else max(means)
            stores[store]["dali_vs_pyav_within_tolerance"] = all(c["dali_vs_pyav"]["within_tolerance"] for c in chosen)
    face_over_original = {method: round(stores["original"]["decode_16_s_total"][method]
                                        / stores["faces"]["decode_16_s_total"][method], 3) for method in methods}
    return stores, {"faces_speedup_over_original": face_over_original}


def notes_for(stores, ratios, unavailable):
    notes = ["Shards of the real fixtures, as `dfdtrain shard` writes them; 16 frames per read (the uniform "
             "sampler's evaluation indices) from the sample's bytes in memory; medians of one run."]
    for store, label in (("original", "original videos"), ("faces", "face clips (track 0)")):
        if "dali_gpu_speedup_over_pyav" in stores[store]:
            notes.append(f"{label}: DALI mixed (NVDEC) {stores[store]['dali_gpu_speedup_over_pyav']}x PyAV "
                         f"(summed medians); worst mean |DALI - PyAV| {stores[store]['dali_vs_pyav_mean_abs_max']}"
                         f"/255, within tests/integration/test_dali.py's tolerance: "
                         f"{'yes' if stores[store]['dali_vs_pyav_within_tolerance'] else 'NO'}")
    for method, value in ratios["faces_speedup_over_original"].items():
        notes.append(f"{method}: face clips {value}x faster to sample than the original videos")
    if "dali_gpu" in unavailable:
        notes.append(f"dali_gpu not measured: {unavailable['dali_gpu']}")
    return notes


def main(argv=None):
    parser = benchmark_parser(__doc__, f"one FF++ clip cut to its first {QUICK_FRAMES} frames, 1 repeat (the kit's CPU "
                              "dry run)", fixtures=True)
    parser.add_argument("--repeats", type=int, default=5, help="timed reads per method and video (median)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes detecting faces for the face store (default: one per video, at most the cores)")
    args = parse_arguments(parser, argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = resolve_device(args.device)
    fixtures = Path(args.fixtures)
    relatives = QUICK_VIDEOS if args.quick else VIDEOS
    missing = [relative for relative in relatives if not (fixtures / relative).is_file()]
    if missing:
        print(f"shard_decode: {fixtures / missing[0]}: fixture not found (pass --fixtures or set DFDTRAIN_FIXTURES)",
              file=sys.stderr)
        return 2
    repeats = 1 if args.quick else args.repeats
    max_frames = QUICK_FRAMES if args.quick else 0
    workers = args.workers or max(1, min(len(relatives), len(os.sched_getaffinity(0))))
    started = time.time()
    from dfdtrain.data.shards.samples import Compute
    from dfdtrain.data.shards.writer import write_shards

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        manifest, fixture_of = folder_manifest(fixtures, relatives, folder, max_frames)
        shard_started = time.time()
        write_shards(manifest, folder / "original", progress=False)
        original_s = time.time() - shard_started
        shard_started = time.time()
        write_shards(manifest, folder / "faces", progress=False, store="faces", compute=Compute(workers=workers))
        faces_s = time.time() - shard_started
        reads = reads_of("original", folder / "original", fixture_of)
        reads += reads_of("faces", folder / "faces", fixture_of)
    methods, unavailable = build_methods(device)
    comparisons = measure(reads, methods, repeats)
    stores, ratios = store_totals(comparisons, methods)
    result = envelope(
        "decode", device,
        {"source": "shards of the real fixtures (original and face stores), bytes in memory", "quick": args.quick,
         "videos": relatives, "first_frames_only": max_frames or None, "repeats": repeats,
         "sampler": {"mode": "uniform", "num_frames": NUM_FRAMES, "train": False},
         "face_store": "FaceClipOptions() defaults (H.264, keyframe every 4 frames, at most 256 px), MTCNN on the CPU",
         "face_workers": workers, "tolerance": {"mean_abs_below": MEAN_TOLERANCE, "p99_abs_at_most": P99_TOLERANCE},
         "script": "benchmarks/gpu/shard_decode.py"},
        started, comparisons=comparisons, stores=stores, ratios=ratios, unavailable=unavailable,
        shard_seconds={"original": round(original_s, 2), "faces": round(faces_s, 2)},
        notes=notes_for(stores, ratios, unavailable))
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
