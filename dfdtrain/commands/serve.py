"""dfdtrain serve: an HTTP detection service and a web page around one loaded detector."""

import argparse
import math

from dfdtrain.commands._common import add_base_weights_argument
from dfdtrain.inference.faces import DEFAULT_FACES, FACES_HELP, face_modes

HELP = "serve a trained detector over HTTP: POST /api/predict, GET /api/model, /healthz and a web page at /"


def positive_float(text):
    """argparse type of serve's float options: a finite number > 0 (nan would disable a limit, inf overflow it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}")
    return value


def add_arguments(parser):
    from dfdtrain.inference import service as serve

    parser.add_argument("--checkpoint", required=True,
                        help="a run directory, a checkpoint folder (RUN/checkpoints/best) or an exported bundle")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available (default)")
    parser.add_argument("--faces", choices=face_modes(), default=DEFAULT_FACES, help=FACES_HELP)
    parser.add_argument("--allow-paths", metavar="DIR",
                        help='also accept JSON {"path": FILE} requests for files inside DIR (default: uploads only)')
    parser.add_argument("--max-mb", type=positive_float, default=serve.DEFAULT_MAX_MB,
                        help=f"largest upload in MB (default {serve.DEFAULT_MAX_MB})")
    parser.add_argument("--timeout", type=positive_float, default=serve.DEFAULT_TIMEOUT,
                        help=f"seconds a request may wait for its result (default {serve.DEFAULT_TIMEOUT:g})")
    parser.add_argument("--body-timeout", type=positive_float, default=serve.DEFAULT_BODY_TIMEOUT, metavar="S",
                        help=f"seconds a request's body (the upload) may take to arrive; slower ones get 408 "
                             f"(default {serve.DEFAULT_BODY_TIMEOUT:g})")
    parser.add_argument("--queue", type=int, default=serve.DEFAULT_QUEUE,
                        help=f"requests that may wait for the model at once; more get 503 (default "
                             f"{serve.DEFAULT_QUEUE})")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="waiting requests scored in one forward pass (default 4)")
    parser.add_argument("--upload-dir", help="where uploads are staged and deleted (default: a temporary folder)")
    add_base_weights_argument(parser)


def run(args):
    from dfdtrain.core.devices import pick_device
    from dfdtrain.core.errors import DfdError
    from dfdtrain.inference.service import serve

    device = pick_device(args.device)
    if not 0 < args.port < 65536:
        raise DfdError(f"--port must be between 1 and 65535, not {args.port}")
    serve(args.checkpoint, host=args.host, port=args.port, device=device, faces=args.faces, max_mb=args.max_mb,
          timeout=args.timeout, queue_size=args.queue, batch_size=args.batch_size, allow_paths=args.allow_paths,
          upload_dir=args.upload_dir, body_timeout=args.body_timeout, base_weights=args.base_weights)
    return 0
