"""dfdtrain preview: a contact sheet of the sampled frames of a video (or a shard sample) with faces and crops."""

import json

from dfdtrain.commands._common import check_minimum, print_json
from dfdtrain.config import ClipSpec, choices
from dfdtrain.core.errors import DfdError
from dfdtrain.inference.faces import NO_FACES, face_modes

HELP = "draw the sampled frames of a video or shard sample with face boxes and crops into a PNG"


def add_arguments(parser):
    parser.add_argument("source", help="a video file, or a shard .tar (first sample, or --key); with --doubtful a "
                                       "face-clip shard folder")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--frames", type=int, default=None, help="frames to sample (default 16; 8 with --doubtful)")
    parser.add_argument("--key", help="sample key inside a shard (default: the first sample); KEY.track1 for a "
                                      "face-clip sample's second track")
    parser.add_argument("--track", type=int, default=None,
                        help="the face track of a face-clip sample to draw (default 0, the first)")
    parser.add_argument("--faces", choices=face_modes(NO_FACES), default=NO_FACES,
                        help="detect faces when the source has no stored boxes (default none: centre crop)")
    parser.add_argument("--crop", choices=choices(ClipSpec, "crop"), default="face", help="crop mode (default face)")
    parser.add_argument("--margin", type=float, default=1 / 3, help="face box growth per side (default 1/3)")
    parser.add_argument("--decoder", default="pyav", help="decoder backend (default pyav)")
    parser.add_argument("--doubtful", action="store_true",
                        help="draw the doubtful videos of a face-clip shard folder (index.json's doubtful_faces: "
                             "the best face track covers under half the video or fails a sanity check), a row each: "
                             "source frames with the kept and dropped tracks, and the stored crops (--frames per "
                             "row, default 8; 24 rows per sheet, more sheets as OUT-2.png, ...)")
    parser.add_argument("--synthesis", choices=("sbi", "vb"),
                        help="draw the training loader's synthetic fakes of a face-clip shard with landmarks: rows "
                             "real / blend mask / synthesised for --samples samples (--frames each, default 8)")
    parser.add_argument("--samples", type=int, default=3, help="samples drawn with --synthesis (default 3)")
    parser.add_argument("--json", action="store_true", help="print what was drawn as JSON")


def run(args):
    from dfdtrain.demo.preview import preview, preview_doubtful

    check_minimum(args.frames, "--frames")
    if not args.out.lower().endswith(".png"):
        raise DfdError(f"--out {args.out}: expected a .png file name")
    if args.synthesis:
        from dfdtrain.demo.preview import preview_synthesis

        check_minimum(args.samples, "--samples")
        if args.doubtful or args.track:
            raise DfdError("--synthesis draws track 0 of face-clip samples: no --doubtful or --track")
        result = preview_synthesis(args.source, args.out, args.synthesis, args.frames or 8, args.samples, args.key)
        print(json.dumps(result) if args.json else
              f"wrote {result['out']} ({args.synthesis} on {len(result['samples'])} sample(s))")
        return 0
    if args.doubtful:
        if args.key or args.track is not None:
            raise DfdError("--doubtful draws every doubtful video of a shard folder: no --key or --track")
        result = preview_doubtful(args.source, args.out, args.frames or 8)
        if args.json:
            print_json(result, indent=None)
        elif not result["sheets"]:
            print(f"no doubtful faces in {args.source}: nothing drawn")
        else:
            print(f"wrote {', '.join(result['sheets'])} ({result['doubtful']} doubtful video(s))")
        return 0
    result = preview(args.source, args.out, args.frames or 16, args.key, args.faces, args.margin, args.crop,
                     args.decoder, track=args.track)
    track = f" track {result['track']}" if result["track"] is not None else ""
    print(json.dumps(result) if args.json else
          f"wrote {result['out']} ({result['sampled']} frames of {result['key']}{track})")
    return 0
