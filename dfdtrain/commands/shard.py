"""dfdtrain shard: manifest.jsonl -> WebDataset tar shards (original bytes or face clips), DALI indexes, index.json."""

import argparse
import os
import shutil
import sys

from dfdtrain.commands._common import print_json
from dfdtrain.data.shards.parts import PART_FORMAT, Part, merge_parts
from dfdtrain.data.shards.plan import DEFAULT_TARGET_BYTES
from dfdtrain.data.shards.samples import Compute
from dfdtrain.data.shards.summary import format_index
from dfdtrain.data.shards.writer import STORES, write_shards
from dfdtrain.core.errors import DfdError

# no "%" here: argparse %-formats a subcommand's help (in 'dfdtrain --help') but not its description (in
# 'dfdtrain shard --help'), so no spelling of a printf pattern reads right in both
HELP = "write WebDataset tar shards (<split>-NNNNNN.tar) of the original videos or their face clips from a manifest"
_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_size(text):
    """'1G', '300M', '65536' -> bytes."""
    text = str(text).strip().lower().removesuffix("b")
    try:
        if text and text[-1] in _UNITS:
            return int(float(text[:-1]) * _UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise DfdError(f"--shard-size: {text!r} is not a size like 1G, 300M or 65536") from None


def part_from_environment(explicit):
    """(Part or None, launched): --part I/N, else the launcher's rank and world size (``rank_and_world``:
    torchrun's RANK/WORLD_SIZE, else an srun step's SLURM_PROCID/SLURM_STEP_NUM_TASKS, not a batch script's
    SLURM_NTASKS: that one runs once for all tasks); a world of one process is no part."""
    if explicit:
        return Part.parse(explicit), False
    from dfdtrain.core.distributed import rank_and_world  # here: it imports torch, which the CLI starts without

    rank, world, _ = rank_and_world()
    if world != 1:
        return Part(rank, world), True
    return None, False


def resolve_device(device):
    """--device: auto = this rank's GPU (LOCAL_RANK) when torch sees one, else cpu."""
    if device == "auto" or device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            if device == "auto":
                return "cpu"
            raise DfdError(f"--device {device}: no GPU is visible (torch.cuda.is_available() is False)")
        if device in ("auto", "cuda"):
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        return device
    if device != "cpu":
        raise DfdError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    return device


def add_arguments(parser):
    from dfdtrain.data.faces.clip_options import CLIP_CODECS, DEFAULT_CRF, NO_FACE_POLICIES, PIXEL_FORMATS, FaceClipOptions
    from dfdtrain.data.faces.landmarks import LANDMARK_MODELS
    from dfdtrain.data.faces.tracks import TrackOptions

    clip_defaults, track_defaults = FaceClipOptions(), TrackOptions()
    parser.add_argument("--manifest", help="manifest.jsonl from 'dfdtrain index' (not with --merge)")
    parser.add_argument("--out", required=True,
                        help="output folder for the shards and index.json, or s3://bucket/prefix (each shard is "
                             "uploaded when written; endpoint and credentials from AWS_ENDPOINT_URL, AWS_PROFILE, ...)")
    parser.add_argument("--staging", help="with --out s3://...: the local folder the run works in (a few shards at a "
                                          "time; default ~/.cache/dfdtrain/staging/BUCKET/PREFIX)")
    parser.add_argument("--shard-size", default=str(DEFAULT_TARGET_BYTES),
                        help="target bytes per shard (of source video), e.g. 1G (default) or 300M")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order across shards (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes that read, check and detect faces")
    scale = parser.add_argument_group("distributed sharding (one folder, many processes or nodes)")
    scale.add_argument("--part", help="write part I of N (0-based, e.g. 3/8): a deterministic share of the shards "
                                      "balanced by predicted work, and a part record; then 'shard --merge' writes "
                                      "index.json. Under torchrun (RANK/WORLD_SIZE) or srun "
                                      "(SLURM_PROCID/SLURM_STEP_NUM_TASKS) the part is the rank, and rank 0 merges "
                                      "when every part is done")
    scale.add_argument("--merge", action="store_true",
                       help="write --out's index.json from the part records of a finished partitioned run")
    scale.add_argument("--device", default="cpu",
                       help="where the face detector runs: cpu (default), cuda, cuda:N, or auto (the rank's GPU "
                            "when there is one)")
    scale.add_argument("--shared-detector", action=argparse.BooleanOptionalAction, default=None,
                       help="one face detector in the main process batching the frames of every worker's videos "
                            "(default: on with a GPU and --workers > 1)")
    scale.add_argument("--frame-cache-mb", type=int, default=None,
                       help="per worker: a video whose decoded frames fit in this much memory is decoded once for "
                            "faces and clips, a larger one twice (default 1024; 0 = always twice)")
    parser.add_argument("--faces", choices=("none", "mtcnn"), default="none",
                        help="detect faces at shard time and store per-frame boxes (default none; "
                             "--store faces always detects, with mtcnn)")
    parser.add_argument("--face-frames", type=int, default=16, help="frames per video to run the face detector on")
    parser.add_argument("--allow-leakage", action="store_true", help="shard a manifest whose groups span splits")
    parser.add_argument("--json", action="store_true", help="print index.json's content as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    faces = parser.add_argument_group("face-clip store (--store faces)")
    faces.add_argument("--store", choices=STORES, default="original",
                       help="original: the video's bytes, untouched (default); faces: each face track cropped to a "
                            "square and re-encoded as a short-GOP clip (sampled decoding ~40x faster, as measured "
                            "in the README)")
    faces.add_argument("--face-size", type=int, default=clip_defaults.size,
                       help="largest clip side in pixels; a smaller face window is stored at its own size, never "
                            f"upscaled (default {clip_defaults.size}; 384 for backbones above 256 px input)")
    faces.add_argument("--face-codec", choices=tuple(CLIP_CODECS), default=clip_defaults.codec,
                       help="h264 (DALI/NVDEC on a GPU, PyAV on a CPU; default) or vp9 (webm: DALI on a CPU too)")
    faces.add_argument("--face-crf", type=int, default=None,
                       help=f"quality, lower is better, 0 lossless (default {DEFAULT_CRF['h264']} for h264, "
                            f"{DEFAULT_CRF['vp9']} for vp9)")
    faces.add_argument("--face-gop", type=int, default=clip_defaults.gop,
                       help=f"keyframe every N frames, 1 = all-intra (default {clip_defaults.gop})")
    faces.add_argument("--face-pix-fmt", choices=PIXEL_FORMATS, default=clip_defaults.pix_fmt,
                       help="yuv420p (default; NVDEC decodes it) or yuv444p (full chroma, CPU decoders only)")
    faces.add_argument("--face-margin", type=float, default=track_defaults.margin,
                       help="crop window growth per side, as a fraction of the face size (default 1/3)")
    faces.add_argument("--detect-every", type=int, default=track_defaults.detect_every,
                       help=f"run the face detector on every N-th frame (default {track_defaults.detect_every}), "
                            "and on more frames where neighbouring detections disagree (--refine-every)")
    faces.add_argument("--refine-every", type=int, default=track_defaults.refine_every,
                       help="between two detections that disagree (a face appears, moves or changes size), detect "
                            f"down to every N-th frame (default {track_defaults.refine_every}; at most --detect-every)")
    faces.add_argument("--max-tracks", type=int, default=track_defaults.max_tracks,
                       help="face tracks (people) kept per video, best first: tracks are ranked on evidence "
                            "(coverage, confidence, landmarks, stability, window inside the frame; see the README) "
                            f"(default {track_defaults.max_tracks})")
    faces.add_argument("--min-track-share", type=float, default=track_defaults.min_share,
                       help="drop a second or later face track spanning less than this share of the video, "
                            f"mostly a false face (default {track_defaults.min_share})")
    faces.add_argument("--min-track-score", type=float, default=track_defaults.min_score,
                       help="a face track whose detections score less than this on average fails a sanity check: "
                            "it ranks after plausible tracks, is never kept second, and as the best track makes "
                            f"the video doubtful (default {track_defaults.min_score})")
    faces.add_argument("--min-track-coverage", type=float, default=None,
                       help="skip (with reason doubtful-face) a video whose best face track covers less than this "
                            "share of its frames or fails a sanity check (default: keep such videos, listed as "
                            "doubtful_faces in index.json at a share of 0.5)")
    faces.add_argument("--no-face", choices=NO_FACE_POLICIES, default=clip_defaults.no_face,
                       help="a video without a face track: keep a centre-square clip (default) or skip it")
    faces.add_argument("--landmarks", choices=tuple(LANDMARK_MODELS), default=None,
                       help="store facial landmarks per stored frame of each face track (what the sbi/vb synthesis "
                            "needs): dlib68 = dlib's 68-point predictor (dlib-bin + face-recognition-models, in "
                            "'dfdtrain[faces]'; its model's training data excludes commercial use); default none")


def face_clip_options(args):
    from dfdtrain.data.faces.clip_options import FaceClipOptions
    from dfdtrain.data.faces.tracks import TrackOptions

    try:
        tracks = TrackOptions(detect_every=args.detect_every, refine_every=args.refine_every,
                              max_tracks=args.max_tracks, margin=args.face_margin,
                              min_share=args.min_track_share, min_score=args.min_track_score)
        return FaceClipOptions(size=args.face_size, codec=args.face_codec, crf=args.face_crf, gop=args.face_gop,
                               pix_fmt=args.face_pix_fmt, no_face=args.no_face, tracks=tracks,
                               min_track_coverage=args.min_track_coverage, landmarks=args.landmarks)
    except ValueError as error:
        raise DfdError(f"face-clip options: {error}") from None


def run(args):
    if args.merge:
        if args.manifest or args.part:
            raise DfdError("--merge takes only --out (the folder the parts wrote into)")
        return report(merge_parts(args.out, progress=not args.quiet), args, merged=True)
    if not args.manifest:
        raise DfdError("--manifest is required (or --merge to merge a partitioned run)")
    if args.workers < 1 or args.face_frames < 1:
        raise DfdError("--workers and --face-frames must be at least 1")
    if args.frame_cache_mb is not None and args.frame_cache_mb < 0:
        raise DfdError("--frame-cache-mb must be 0 or more")
    if args.landmarks and args.store != "faces":
        raise DfdError(f"--landmarks {args.landmarks}: landmarks are stored with face tracks, add --store faces "
                       f"(original-video shards keep face boxes on a few frames only)")
    part, launched = part_from_environment(args.part)
    clip_options = face_clip_options(args) if args.store == "faces" else None
    compute = Compute(workers=args.workers, device=resolve_device(args.device), shared_detector=args.shared_detector,
                      frame_cache_bytes=None if args.frame_cache_mb is None else args.frame_cache_mb << 20)
    # under a launcher the ranks share one terminal: the first part's bar stands for all
    progress = not args.quiet and (not launched or part.index == 0)
    result = write_shards(args.manifest, args.out, target_bytes=parse_size(args.shard_size), seed=args.seed,
                          face_detector=None if args.faces == "none" else args.faces, face_frames=args.face_frames,
                          allow_leakage=args.allow_leakage, progress=progress, store=args.store,
                          face_clip_options=clip_options, compute=compute, part=part,
                          merge_when_done=launched and part is not None and part.index == 0, staging=args.staging)
    if result.get("format") == PART_FORMAT:  # a part's record (rank 0 under a launcher merged: an index)
        if args.json:
            print_json(result)
        elif not launched:
            for note in result["notes"]:
                print(note)
            print(f"part {part}: {len(result['shards'])} shard(s), {result['samples']} videos "
                  f"({result['resumed_shards']} shard(s) kept from an earlier run); when every part is done: "
                  f"dfdtrain shard --merge --out {args.out}")
        return 0
    return report(result, args, merged=part is not None and part.count > 1)


def report(index, args, merged=False):
    """``merged``: ``index`` is a merge's, which leaves out the shards' key lists; --json prints the file."""
    if args.json and merged:
        with open(os.path.join(args.out, "index.json")) as handle:
            shutil.copyfileobj(handle, sys.stdout)
    elif args.json:
        print_json(index)
    else:
        print(format_index(index))
        print(f"wrote {args.out.rstrip('/')}/index.json")
    return 0
