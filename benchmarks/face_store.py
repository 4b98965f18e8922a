"""Face-clip store vs original videos on the real fixtures: bytes, sampled 16-frame decode time, fidelity.

For each real video (DFDC and FF++, from the shared fixtures) this does what ``dfdtrain shard --store faces``
does per video: one decoding pass with MTCNN on scheduled frames (every 16th, refined every 4th where
neighbours disagree), face tracks, each track cut to a square at its native size (capped at 256 px) and
re-encoded, then measures, per setting:
  bytes     the clips (all kept tracks) vs the original file, and vs PNG crops of the same frames (estimated
            from 16 crops spread over track 0: their mean PNG size x the track's frame count);
  decode    16 frames, the uniform sampler's evaluation indices, decoded with the ``pyav`` backend from the
            bytes in memory: the original (over its frames) vs track 0's clip (over the clip's frames);
            the median of ``--repeats`` reads, originals and clips interleaved so that machine load hits them
            alike (the ratios compare one run); plus DALI on a GPU (original and H.264 clips) when one is
            visible, and DALI on the CPU for the VP9 clips;
  fidelity  PSNR and mean absolute error (0..255 levels) of track 0's stored clip vs the crops that went into
            it (32 frames), as recorded in the shard json.
Settings: ``default`` (FaceClipOptions(): h264 crf 18, keyframe every 4 frames, yuv420p, at most 256 px),
``near_lossless`` (h264 crf 10, yuv444p: full chroma, CPU decoders only), ``all_intra`` (h264 crf 18, every
frame a keyframe), ``vp9`` (vp9 crf 26, gop 4: what DALI decodes on a CPU).

    python benchmarks/face_store.py [--quick] [--repeats 3] [--device auto|cpu|cuda]
                                    [--out benchmarks/results/face_store_cpu.json]
"""

import argparse
import dataclasses
import io
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

from common import add_fixtures_argument, emit, envelope, parse_arguments

NUM_FRAMES = 16
PNG_SAMPLE_FRAMES = 16
QUICK_VIDEOS = ["dfdc/dfdc_train_part_0/brtujopkby.mp4", "ffpp/original_sequences/youtube/c40/videos/183.mp4"]
# Full mode: every DFDC clip, every FF++ original, and one fake of each FF++ method.
FULL_GLOBS = ["dfdc/*/*.mp4", "ffpp/original_sequences/*/c40/videos/*.mp4",
              "ffpp/manipulated_sequences/*/c40/videos/183_253.mp4"]
SETTINGS = {
    "default": {},
    "near_lossless": {"crf": 10, "pix_fmt": "yuv444p"},
    "all_intra": {"gop": 1},
    "vp9": {"codec": "vp9"},
}
GOALS = {"decode_speedup_min": 10.0, "bytes_vs_original_max": 1.0, "png_vs_clip_min": 20.0,
         "mean_abs_error_max": 2.0}
# Issue 29 restates the byte and fidelity goals: clips <= the originals' bytes at <= 2/255 hold on DFDC (and FF++
# raw/c23, not among the fixtures). On FF++ c40 the 4:2:0 chroma floor makes a clip faithful to <= 2/255 larger
# than the c40 source, so c40's goals are against a DeepfakeBench-style PNG store: bench shard checks them.
SOURCE_GOAL_SETS = ("dfdc",)
C40_GOALS = "FF++ c40: bytes <= a 32-PNG-crop store's at <= 2/255 and >= 10x faster sampled decode (bench shard)"


def clip_options(setting):
    from dfdtrain.data.faces.clip_options import FaceClipOptions

    return FaceClipOptions(**SETTINGS[setting])


def png_bytes_estimate(data, name, track, size):
    """Bytes of track 0 stored as one PNG per frame: mean PNG size of 16 spread crops x the frame count."""
    import numpy as np
    from PIL import Image

    from dfdtrain.data.decode.decoders import build_decoder
    from dfdtrain.data.faces.clip_encoding import crop_window
    from dfdtrain.data.decode.sampler import uniform_indices

    positions = uniform_indices(len(track["source_frames"]), PNG_SAMPLE_FRAMES)
    frames = build_decoder("pyav").read(data, [track["source_frames"][p] for p in positions], name=name)
    sizes = []
    for rgb, position in zip(frames, positions):
        buffer = io.BytesIO()
        Image.fromarray(crop_window(rgb, track["windows"][position], size)).save(buffer, format="PNG")
        sizes.append(buffer.tell())
    return int(np.mean(sizes) * len(track["source_frames"]))


def prepare_video(job):
    """Detect, track and encode one video in every setting (run in a worker process)."""
    import torch

    torch.set_num_threads(1)
    from dfdtrain.data.faces.clip_encoding import encode_tracks
    from dfdtrain.data.faces.store import centre_track, find_tracks, scan_video
    from dfdtrain.data.faces.detect import build_face_detector
    from dfdtrain.data.decode.video import probe

    fixtures, relative, settings = job
    path = Path(fixtures) / relative
    data = path.read_bytes()
    info = probe(data, name=str(path))
    default = clip_options("default")
    detector = build_face_detector("mtcnn")
    started = time.perf_counter()
    scan = scan_video(data, str(path), info, detector, default)  # one decoding pass, its frames kept for encoding
    tracks, _ = find_tracks(scan, detector, default)  # (kept tracks best first, dropped ones)
    detect_s = time.perf_counter() - started
    no_face = not tracks
    if no_face:
        tracks = [centre_track(info["frames"], info["width"], info["height"])]
    video = {"video": relative, "dataset": relative.split("/")[0], "codec": info["codec"], "width": info["width"],
             "height": info["height"], "frames": info["frames"], "original_bytes": len(data), "no_face": no_face,
             "tracks": len(tracks), "track_frames": len(tracks[0]["source_frames"]),
             "detect_and_track_s": round(detect_s, 2),
             "png_crops_bytes_estimate": png_bytes_estimate(data, str(path), tracks[0], default.size),
             "settings": {}}
    clips = {}
    for setting in settings:
        options = clip_options(setting)
        started = time.perf_counter()
        encoded = encode_tracks(data, str(path), info, tracks, options, scan=scan)
        clips[setting] = encoded[0][0]
        video["settings"][setting] = {"clip_bytes": sum(len(clip) for clip, *_ in encoded),
                                      "track0_bytes": len(encoded[0][0]), "track0_size": encoded[0][3],
                                      "crop_encode_check_s": round(time.perf_counter() - started, 2),
                                      "fidelity": encoded[0][1]}
    return video, clips


def decode_methods(use_gpu):
    """{method: (decoder, which videos it reads)}: pyav always; DALI where it can decode here."""
    from dfdtrain.data.decode.decoders import build_decoder

    methods = {"pyav": (build_decoder("pyav"), "all")}
    unavailable = {}
    try:
        methods["dali_cpu"] = (build_decoder("dali", device="cpu"), "vp9")
    except Exception as error:  # DfdError (nvidia.dali missing) or a DALI start-up failure
        unavailable["dali_cpu"] = f"{type(error).__name__}: {error}"
    if use_gpu:
        try:
            methods["dali_gpu"] = (build_decoder("dali", device="gpu"), "h264")
        except Exception as error:
            unavailable["dali_gpu"] = f"{type(error).__name__}: {error}"
    else:
        unavailable["dali_gpu"] = "no GPU (run with --device cuda on a GPU machine)"
    return methods, unavailable


def time_decodes(videos, originals, clips, repeats, use_gpu):
    """Median seconds of a 16-frame sampled read per (video, source, method); sources interleaved per repeat."""
    from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices

    methods, unavailable = decode_methods(use_gpu)
    reads = []  # (video number, source, method, decoder, bytes, name, indices)
    for number, video in enumerate(videos):
        sources = [("original", originals[number], video["codec"], "x.mp4", video["frames"])]
        sources += [(setting, clip, "vp9" if setting == "vp9" else "h264", "x.webm" if setting == "vp9" else "x.mp4",
                     video["track_frames"]) for setting, clip in clips[number].items()]
        for source, data, codec, name, frame_count in sources:
            indices, _ = sample_indices(frame_count, SamplerConfig(mode="uniform", num_frames=NUM_FRAMES))
            for method, (decoder, reads_codec) in methods.items():
                if reads_codec == "all" or reads_codec == codec:
                    reads.append((number, source, method, decoder, data, name, indices.tolist()))
    for _, _, _, decoder, data, name, indices in reads:  # warm-up: thread pools, DALI pipelines
        decoder.read(data, indices, name=name)
    times = {}
    for _ in range(repeats):
        for number, source, method, decoder, data, name, indices in reads:
            started = time.perf_counter()
            frames = decoder.read(data, indices, name=name)
            times.setdefault((number, source, method), []).append(time.perf_counter() - started)
            assert len(frames) == len(indices)
    for (number, source, method), seconds in times.items():
        entry = videos[number] if source == "original" else videos[number]["settings"][source]
        entry.setdefault("decode_16_median_s", {})[method] = round(statistics.median(seconds), 5)
    return unavailable


def summarise(videos, settings, source_goals=False):
    """Totals and ratios over a group of videos, per setting, with the goals checked: decode and PNG always, bytes
    and fidelity against the originals with ``source_goals`` (a set in SOURCE_GOAL_SETS)."""
    original_bytes = sum(video["original_bytes"] for video in videos)
    original_s = sum(video["decode_16_median_s"]["pyav"] for video in videos)
    summary = {"videos": len(videos), "original_bytes": original_bytes,
               "png_crops_bytes_estimate": sum(video["png_crops_bytes_estimate"] for video in videos),
               "original_decode_16_s_total": round(original_s, 4), "settings": {}}
    for setting in settings:
        entries = [video["settings"][setting] for video in videos]
        clip_bytes = sum(entry["clip_bytes"] for entry in entries)
        track0_bytes = sum(entry["track0_bytes"] for entry in entries)
        clip_s = sum(entry["decode_16_median_s"]["pyav"] for entry in entries)
        speedups = [video["decode_16_median_s"]["pyav"] / entry["decode_16_median_s"]["pyav"]
                    for video, entry in zip(videos, entries)]
        errors = [entry["fidelity"]["mean_abs_error"] for entry in entries]
        result = {
            "clip_bytes": clip_bytes,
            "bytes_vs_original": round(clip_bytes / original_bytes, 4),
            "png_vs_clip": round(summary["png_crops_bytes_estimate"] / track0_bytes, 2),
            "clip_decode_16_s_total": round(clip_s, 4),
            "decode_speedup_total": round(original_s / clip_s, 2),
            "decode_speedup_median_per_video": round(statistics.median(speedups), 2),
            "decode_speedup_min_per_video": round(min(speedups), 2),
            "psnr_db_mean": round(statistics.mean(entry["fidelity"]["psnr_db"] for entry in entries), 2),
            "psnr_db_min": min(entry["fidelity"]["psnr_db"] for entry in entries),
            "mean_abs_error_mean": round(statistics.mean(errors), 3),
            "mean_abs_error_max": max(errors),
        }
        result["goals_met"] = {
            "decode_speedup_total>=10": result["decode_speedup_total"] >= GOALS["decode_speedup_min"],
            "png_vs_clip>=20": result["png_vs_clip"] >= GOALS["png_vs_clip_min"],
        }
        if source_goals:
            result["goals_met"].update({
                "bytes_vs_original<=1": result["bytes_vs_original"] <= GOALS["bytes_vs_original_max"],
                "mean_abs_error_max<=2": result["mean_abs_error_max"] <= GOALS["mean_abs_error_max"]})
        summary["settings"][setting] = result
    return summary


def find_videos(fixtures, quick):
    if quick:
        return list(QUICK_VIDEOS)
    found = []
    for pattern in FULL_GLOBS:
        found += sorted(str(path.relative_to(fixtures)) for path in Path(fixtures).glob(pattern))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(parser)
    parser.add_argument("--quick", action="store_true",
                        help="2 videos (the DFDC clip and FF++ 183), settings default and all_intra, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3, help="timed reads per video and source (median)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes for detection and encoding (timing runs in this one)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda (or auto with a GPU visible): also time DALI/NVDEC on the originals and H.264 "
                             "clips; detection and encoding run on the CPU either way")
    args = parse_arguments(parser, argv)
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be >= 1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("face_store benchmark: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    use_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    fixtures = Path(args.fixtures)
    relatives = find_videos(fixtures, args.quick)
    missing = [relative for relative in relatives if not (fixtures / relative).is_file()]
    if not relatives or missing:
        print(f"face_store benchmark: fixture {fixtures / (missing or ['*'])[0]} not found (pass --fixtures)",
              file=sys.stderr)
        return 2
    settings = ["default", "all_intra"] if args.quick else list(SETTINGS)
    repeats = 2 if args.quick else args.repeats
    started = time.time()
    jobs = [(str(fixtures), relative, settings) for relative in relatives]
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            prepared = pool.map(prepare_video, jobs, chunksize=1)
    else:
        prepared = [prepare_video(job) for job in jobs]
    prepare_s = time.time() - started
    videos = [video for video, _ in prepared]
    clips = [video_clips for _, video_clips in prepared]
    originals = [(fixtures / relative).read_bytes() for relative in relatives]
    unavailable = time_decodes(videos, originals, clips, repeats, use_gpu)
    result = envelope(
        "face_store", "cuda" if use_gpu else "cpu",
        {"quick": args.quick, "repeats": repeats, "sampler": {"mode": "uniform", "num_frames": NUM_FRAMES,
                                                              "train": False},
         "clip_settings": {setting: dataclasses.asdict(clip_options(setting)) for setting in settings},
         "png_estimate": f"mean PNG bytes of {PNG_SAMPLE_FRAMES} track-0 crops x track-0 frames",
         "decode_unavailable": unavailable},
        started,
        goals=GOALS,
        goals_scope={"bytes_vs_original<=1, mean_abs_error_max<=2": f"by_dataset {', '.join(SOURCE_GOAL_SETS)}",
                     "decode_speedup_total>=10, png_vs_clip>=20": "every set", "c40": C40_GOALS},
        overall=summarise(videos, settings),
        by_dataset={dataset: summarise([video for video in videos if video["dataset"] == dataset], settings,
                                       source_goals=dataset in SOURCE_GOAL_SETS)
                    for dataset in sorted({video["dataset"] for video in videos})},
        videos=videos,
        detect_track_encode_s=round(prepare_s, 1))
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
