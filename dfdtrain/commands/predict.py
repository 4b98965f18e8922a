"""dfdtrain predict: REAL/FAKE scores for video files from a trained detector."""

import json

from dfdtrain.errors import DfdError, printable

HELP = "predict REAL/FAKE for video files with a trained detector (run dir, checkpoint or bundle)"


def add_arguments(parser):
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to score")
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory, a checkpoint folder (RUN/checkpoints/best) or an exported bundle")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON list on stdout")
    parser.add_argument("--faces", choices=("mtcnn", "none"), default="mtcnn",
                        help="mtcnn: detect faces and crop as in training (default); none: the crop without boxes")
    parser.add_argument("--frames", type=int, help="frames to sample per video (default: as in training)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per model batch (default 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def format_result(result):
    if "error" in result:
        return f"ERROR {printable(result['path'])}: {printable(result['error'])}"
    return f"{result['verdict']} {result['p_fake']:.3f}  {printable(result['path'])}"


def run(args):
    from dfdtrain.predict import Predictor

    if args.frames is not None and args.frames < 1:
        raise DfdError("--frames must be at least 1")
    if args.batch_size < 1:
        raise DfdError("--batch-size must be at least 1")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DfdError("--device cuda: CUDA is not available")
    predictor = Predictor(args.checkpoint, device=args.device, faces=args.faces, num_frames=args.frames,
                          batch_size=args.batch_size, progress=not args.quiet)
    results = predictor.predict(args.videos)
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            print(format_result(result))
    return 1 if any("error" in result for result in results) else 0
