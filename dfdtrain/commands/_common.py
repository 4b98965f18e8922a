"""What several commands share: the argument parser that answers a bad flag with one line, the options of the
commands that score shards with a detector, the checks of count and size options, the frame size and the --json
output (--device is ``core.devices.pick_device``). Imported by ``cli.py`` at start-up, so nothing heavy (torch,
the decoders) is imported at module level, only inside the functions that need it."""

import argparse
import json
import re

from dfdtrain.core.errors import DfdError


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints a usage block before the error; we print only the error line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_scoring_arguments(parser, evaluation=True):
    """The options of every command that scores shards with a detector (evaluate, protocol, calibrate);
    ``evaluation``: also the threshold, the shard check and the bootstrap."""
    if evaluation:
        parser.add_argument("--threshold", type=float,
                            help="score at or above which a video is called fake (default: the detector's own)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per batch and rank (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers per rank (default 2)")
    parser.add_argument("--decoder", default="pyav", help="pyav, torchcodec, dali or auto (default pyav)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu or cuda (default cpu)")
    if evaluation:
        parser.add_argument("--no-verify-shards", dest="verify_shards", action="store_false",
                            help="skip checking each shard's sha256 against its index.json before reading (on by "
                                 "default: a corrupt or rewritten shard stops with one line)")
        parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                            help="resamples of the groups (identities, source pairs) for 95%% intervals (default "
                                 "1000; 0: none); fewer than 2 groups of real or of fake videos give none (n/a)")


def check_scoring_arguments(args):
    """One line for a scoring option that cannot work, before any process group or model."""
    from dfdtrain.data.decode.decoders import DECODERS

    if getattr(args, "threshold", None) is not None and not 0.0 <= args.threshold <= 1.0:
        raise DfdError(f"--threshold must be in [0, 1], not {args.threshold}")
    if args.batch_size < 1 or args.workers < 0 or getattr(args, "bootstrap", 0) < 0:
        raise DfdError("--batch-size must be >= 1, --workers >= 0 and --bootstrap >= 0")
    if args.decoder not in DECODERS:
        raise DfdError(f"--decoder: {DECODERS.unknown_name_message(args.decoder)}")


def add_base_weights_argument(parser):
    """--base-weights, for every command that loads a detector: the base model's weights file of a checkpoint
    that holds only its trained tensors (a finetune.method other than full), when the file its detector.json
    names is not on this machine (or the base came from the timm hub: never downloaded)."""
    parser.add_argument("--base-weights", metavar="PATH",
                        help="the base model's weights file (.safetensors/.pth) for a checkpoint of a frozen-base "
                             "run (finetune.method lora, layernorm, ...) when the file it names is not here; it "
                             "must be the base the run trained on (its sha256 is checked)")


# dfdtrain.data.perturb.TYPES (it imports torch, so not here at start-up; tests check the two agree)
PERTURBATION_TYPES = ("saturation", "contrast", "block", "noise", "blur", "jpeg", "h264", "resize")


def add_perturb_argument(parser, what="video"):
    """--perturb TYPE:LEVEL (evaluate, predict): every ``what`` degraded by one robustness perturbation
    (``dfdtrain.data.perturb``); the spec is checked by the command (one line for a bad one)."""
    parser.add_argument("--perturb", metavar="TYPE:LEVEL",
                        help=f"degrade every {what} with one robustness perturbation at one level before scoring "
                             f"(DeeperForensics-1.0's distortions, seeded per video): TYPE one of "
                             f"{', '.join(PERTURBATION_TYPES)}; LEVEL 0..5 (0: none, the clean {what}s; 5: the "
                             "strongest); h264 re-encodes the source video, the others change the decoded frames; "
                             "e.g. jpeg:3")


def check_minimum(value, flag, minimum=1):
    """One line when an option given (``value`` not None) is below its least value: "--frames must be at least
    1"; ``flag`` is the option as typed."""
    if value is not None and value < minimum:
        raise DfdError(f"{flag} must be at least {minimum}")


def parse_frame_size(text):
    """'128x96' -> (128, 96)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise DfdError(f"--size {text}: expected WIDTHxHEIGHT, e.g. 128x128")
    width, height = int(match.group(1)), int(match.group(2))
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % 2:
            raise DfdError(f"--size {text}: {name} must be a positive even number (yuv420p video)")
    return width, height


def print_json(value, indent=2):
    """--json: ``value`` on stdout as JSON (indented unless ``indent`` is None), then a newline."""
    print(json.dumps(value, indent=indent))
