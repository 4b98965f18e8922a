"""The face store with the face detector on the GPU vs the CPU: videos/s and seconds per stage, one run.

The carried DFDC clip (10 s, 1080x1920 portrait, 300 frames) is copied ``--copies`` times under other names into
one folder dataset, which is sharded as ``dfdtrain shard --store faces`` writes it (``write_shards``,
FaceClipOptions defaults, ``--workers`` processes) twice: with MTCNN on the GPU (several workers then share one
detector in the main process, which batches all their frames) and on the CPU (a detector per worker). Each run is
timed from the call to its return, as a user would wait for it: worker start-up and the detector's load included.
Per run: wall seconds, videos/s, wall seconds per video, and from its index.json the seconds per stage (decode,
detect, track, encode, verify; summed over worker processes, so they can exceed the wall time), the frames the
detector saw and the shared detector's batching. Goal on one H100/H200 (reported, not enforced): <= 1 s of wall
time per 10-s 1080p DFDC video with the detector on the GPU.

The result is a ``shard_faces`` benchmark result.

    python benchmarks/gpu/shard_faces.py [--device auto|cpu|cuda] [--quick] [--copies 16] [--workers N] [--out FILE]
"""

import os
import sys
import tempfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent
BENCHMARKS = KIT.parent
sys.path.insert(0, str(BENCHMARKS))  # common.py: the envelope, devices and JSON out every benchmark shares
sys.path.insert(0, str(KIT))  # shard_decode.py: the folder dataset of fixture copies, and cutting a clip short

from common import benchmark_parser, emit, envelope, parse_arguments, resolve_device  # noqa: E402
from shard_decode import QUICK_FRAMES, folder_manifest  # noqa: E402

# 10 s, 1080x1920 portrait without a rotation flag, 300 frames: in the kit's carried fixtures (kit_carry.py FIXTURES)
CLIP = "dfdc/dfdc_train_part_0/brtujopkby.mp4"
QUICK_COPIES = 2
GOAL_S_PER_VIDEO = 1.0


def shard_run(manifest, out, device, workers, videos):
    """Shard the face store with the detector on ``device``; the run's figures from its index.json."""
    from dfdtrain.data.shards.samples import Compute
    from dfdtrain.data.shards.writer import write_shards

    started = time.perf_counter()
    index = write_shards(manifest, out, progress=False, store="faces",
                         compute=Compute(workers=workers, device=device))
    wall = time.perf_counter() - started
    totals = index["totals"]
    run = {"device": device, "workers": workers, "videos": videos, "samples": totals["samples"],
           "skipped": totals["skipped"], "doubtful_faces": len(index.get("doubtful_faces", [])),
           "wall_s": round(wall, 2), "videos_per_s": round(videos / wall, 3),
           "wall_s_per_video": round(wall / videos, 3), "stage_seconds": totals.get("stage_seconds", {}),
           "detector_frames": totals.get("detector_frames")}
    if "shared_detector" in totals:
        run["shared_detector"] = totals["shared_detector"]
    return run


def goal_of(runs, quick, unavailable):
    goal = {"wall_s_per_dfdc_video_at_most": GOAL_S_PER_VIDEO, "met": None}
    if "cuda" in unavailable:
        goal["reason"] = f"not measured: {unavailable['cuda']}"
    elif quick:  # a clip cut short is not the 10-s video the goal is about
        goal["reason"] = f"not measured: --quick cuts the clip to its first {QUICK_FRAMES} frames"
    else:
        goal["met"] = runs["cuda"]["wall_s_per_video"] <= GOAL_S_PER_VIDEO
    return goal


def notes_for(runs, ratios, goal):
    notes = ["The DFDC fixture clip copied under other names, sharded as `dfdtrain shard --store faces` writes it; "
             "wall time from the call to its return (worker start-up and the detector's load included); stage "
             "seconds are summed over worker processes."]
    for device, run in runs.items():
        shared = run.get("shared_detector")
        notes.append(f"detector on {device}: {run['videos']} videos in {run['wall_s']} s ({run['videos_per_s']} "
                     f"videos/s, {run['wall_s_per_video']} s each) with {run['workers']} workers"
                     + (f", one shared detector ({shared['frames_per_batch']} frames per batch)" if shared else ""))
    if "cpu_over_gpu_wall" in ratios:
        notes.append(f"GPU detector {ratios['cpu_over_gpu_wall']}x faster than the CPU's (wall time)")
    notes.append(f"goal <= {GOAL_S_PER_VIDEO} s per 10-s 1080p DFDC video on the GPU: "
                 + (("met" if goal["met"] else "NOT met") if goal["met"] is not None else goal["reason"]))
    return notes


def main(argv=None):
    parser = benchmark_parser(__doc__, f"{QUICK_COPIES} copies cut to the first {QUICK_FRAMES} frames (the kit's CPU "
                              "dry run)", fixtures=True)
    parser.add_argument("--copies", type=int, default=16, help="copies of the DFDC clip to shard (default 16)")
    parser.add_argument("--workers", type=int, default=0, help="shard processes (default: the usable cores)")
    args = parse_arguments(parser, argv)
    if args.copies < 1 or args.workers < 0:
        parser.error("--copies must be >= 1 and --workers >= 0")
    device = resolve_device(args.device)
    clip = Path(args.fixtures) / CLIP
    if not clip.is_file():
        print(f"shard_faces: {clip}: fixture not found (pass --fixtures or set DFDTRAIN_FIXTURES)", file=sys.stderr)
        return 2
    copies = QUICK_COPIES if args.quick else args.copies
    max_frames = QUICK_FRAMES if args.quick else 0
    workers = args.workers or len(os.sched_getaffinity(0))
    devices = ["cuda", "cpu"] if device.type == "cuda" else ["cpu"]
    unavailable = {} if "cuda" in devices else {"cuda": "no GPU (run with --device cuda on a GPU machine)"}
    started = time.time()
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        manifest, _ = folder_manifest(Path(args.fixtures), [CLIP] * copies, folder, max_frames)
        for name in devices:  # the GPU first: a failure there is what the kit must see, whatever the CPU does
            runs[name] = shard_run(manifest, folder / f"faces_{name}", name, workers, copies)
    ratios = {}
    if "cuda" in runs:
        ratios["cpu_over_gpu_wall"] = round(runs["cpu"]["wall_s"] / runs["cuda"]["wall_s"], 3)
    goal = goal_of(runs, args.quick, unavailable)
    result = envelope(
        "shard_faces", device,
        {"source": CLIP, "quick": args.quick, "copies": copies, "first_frames_only": max_frames or None,
         "workers": workers, "devices": devices, "store": "faces",
         "face_store": "FaceClipOptions() defaults, MTCNN; on the GPU with several workers one shared detector",
         "script": "benchmarks/gpu/shard_faces.py"},
        started, runs=runs, ratios=ratios, goal=goal, unavailable=unavailable, notes=notes_for(runs, ratios, goal))
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
