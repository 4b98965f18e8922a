"""``dfdtrain synth``: generate the built-in synthetic real/fake video dataset."""


from dfdtrain.commands._common import parse_frame_size, print_json

HELP = "Generate a small synthetic real/fake face video dataset (the built-in default dataset)."


def add_arguments(parser):
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created; refused if it holds files of something else)")
    parser.add_argument("--count", type=int, default=40, metavar="N",
                        help="number of videos, real and fake alternating (default 40)")
    parser.add_argument("--frames", type=int, default=24, metavar="N", help="frames per video (default 24)")
    parser.add_argument("--size", default="128x128", metavar="WxH", help="frame size, both even (default 128x128)")
    parser.add_argument("--fps", type=int, default=12, metavar="N", help="frames per second (default 12)")
    parser.add_argument("--codec", default="h264", metavar="CODEC", help="h264 (.mp4) or vp9 (.webm) (default h264)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="random seed; the same arguments give the same files (default 0)")
    parser.add_argument("--gop", type=int, default=12, metavar="N", help="keyframe interval in frames (default 12)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def run(args):
    # Imported here so `dfdtrain --help` does not pay for numpy and PyAV.
    from dfdtrain.demo.synth import synthesize

    width, height = parse_frame_size(args.size)
    summary = synthesize(
        args.out,
        count=args.count,
        frames=args.frames,
        width=width,
        height=height,
        fps=args.fps,
        codec=args.codec,
        seed=args.seed,
        gop=args.gop,
        progress=True,
    )
    if args.json:
        print_json(summary)
    else:
        counts = summary["counts"]
        print(
            f"wrote {summary['videos']} videos ({counts['real']} real, {counts['fake']} fake, "
            f"{summary['persons']} persons) to {summary['out_dir']}: "
            f"{summary['total_bytes'] / 1e6:.2f} MB in {summary['seconds']:.1f} s"
        )
    return 0
