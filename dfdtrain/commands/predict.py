"""dfdtrain predict: REAL/FAKE scores for video files from a trained detector."""

from pathlib import Path

from dfdtrain.commands._common import add_base_weights_argument, add_perturb_argument, check_minimum, print_json
from dfdtrain.core.errors import DfdError, printable
from dfdtrain.inference.faces import DEFAULT_FACES, FACES_HELP, face_modes

HELP = "predict REAL/FAKE for video files with a trained detector (run dir, checkpoint or bundle)"


def add_arguments(parser):
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to score")
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory, a checkpoint folder (RUN/checkpoints/best) or an exported bundle")
    add_base_weights_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON list on stdout")
    parser.add_argument("--faces", choices=face_modes(), default=DEFAULT_FACES, help=FACES_HELP)
    parser.add_argument("--frames", type=int, help="frames to sample per video (default: as in training)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per model batch (default 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--explain", metavar="DIR",
                        help="write a Grad-CAM map of what drove the fake score over each sampled crop: "
                             "DIR/KEY-NNN.png per frame (NNN: its frame number) and DIR/KEY-strip.png per video")
    add_perturb_argument(parser)


MAX_POSITIONS_SHOWN = 16  # per-position scores in the human output; --json has them all


def format_result(result):
    """A file's result for people: one line for an error; for a scored video the verdict line (``FAKE 0.873
    PATH``) and 4 indented ones: the scale of p_fake (and the raw value) with the threshold, frames and faces,
    the per-position scores on the verdict's scale (at most MAX_POSITIONS_SHOWN), the seconds per stage."""
    if "error" in result:
        return f"ERROR {printable(result['path'])}: {printable(result['error'])}"
    scales = result.get("scales", {})
    scale = scales.get("p_fake", "calibrated")
    how = (f"temperature {result['temperature']:.4g}; raw {result['p_fake_raw']:.3f}" if scale == "calibrated"
           else "no calibration fitted")
    head = (f"{result['verdict']} {result['p_fake']:.3f}  {printable(result['path'])}\n"
            f"  {scale} P(fake) ({how}), threshold {result['threshold']:.3f}")
    video = result["video"]
    faces = ("no face detection" if result["faces_found"] is None
             else f"faces found in {result['faces_found']} of {result['frames_used']} frames")
    frames = (f"  frames {result['frames_used']} used of {result.get('clip_frames', result['frames_used'])} "
              f"(video: {video['frames']} frames, {video['width']}x{video['height']} {video['codec']}), {faces}")
    key = next((key for key in (*scales, *result) if key.endswith("_scores")), None)
    lines = [head, frames]
    if key:
        values = result[key]
        shown = " ".join(f"{value:.2f}" for value in values[:MAX_POSITIONS_SHOWN])
        more = f" ... (+{len(values) - MAX_POSITIONS_SHOWN} more)" if len(values) > MAX_POSITIONS_SHOWN else ""
        lines.append(f"  {key.replace('_', ' ')} ({scales.get(key, scale)}): {shown}{more}")
    stages = result.get("stage_seconds") or {"total": result["seconds"]}
    lines.append("  seconds: " + ", ".join(f"{stage} {value:.3f}" for stage, value in stages.items()))
    if "perturbation" in result:
        lines.append(f"  {format_perturbation(result['perturbation'])}")
    return "\n".join(lines)


def format_perturbation(summary):
    """``perturbation: jpeg:3 on every video (down-then-up resize divisor (JPEG) = 4)``."""
    from dfdtrain.evaluation.report import perturbation_line

    return f"perturbation: {perturbation_line(summary)}"


def format_explain(explain):
    """Where a video's evidence maps went (``predict --explain``), or why there are none: one line."""
    if "strip" not in explain:
        return f"  maps: {printable(explain.get('note', 'none'))}"
    return (f"  maps ({explain['method']} on {explain['layer']}): {printable(explain['strip'])} and "
            f"{len(explain['files'])} frame PNGs beside it")


def run(args):
    from dfdtrain.core.devices import pick_device
    from dfdtrain.inference.predict import Predictor

    check_minimum(args.frames, "--frames")
    check_minimum(args.batch_size, "--batch-size")
    if args.explain is not None and Path(args.explain).exists() and not Path(args.explain).is_dir():
        raise DfdError(f"--explain {printable(args.explain)}: not a folder")
    predictor = Predictor(args.checkpoint, device=pick_device(args.device), faces=args.faces, num_frames=args.frames,
                          batch_size=args.batch_size, progress=not args.quiet, base_weights=args.base_weights,
                          perturb=args.perturb)
    results = predictor.predict(args.videos, explain_dir=args.explain)
    if args.json:
        print_json(results, indent=None)
    else:
        for result in results:
            print(format_result(result))
            if "explain" in result:
                print(format_explain(result["explain"]))
    return 1 if any("error" in result for result in results) else 0
