"""dfdtrain embed: cache a frozen backbone's frame embeddings of video shards as embedding shards."""


from dfdtrain.commands._common import print_json
from dfdtrain.core.errors import DfdError

HELP = "run a frozen backbone once over sampled frames and write per-video frame embeddings as shards"


def add_arguments(parser):
    parser.add_argument("--config", help="experiment YAML (model.backbone, data.num_frames, ...)")
    parser.add_argument("--shards", action="append", required=True,
                        help="video shards to embed, e.g. 'shards/train-*.tar' (repeatable)")
    parser.add_argument("--out", required=True, help="output folder for the embedding shards")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored precision")
    parser.add_argument("--json", action="store_true", help="print the index as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")


def run(args):
    from dfdtrain.checks import load_experiment
    from dfdtrain.training.embedding_shards import write_embeddings

    config = load_experiment(args.config, args.overrides)
    if config.data.source != "videos":
        raise DfdError("embed reads video shards: data.source must be 'videos'")
    index = write_embeddings(config, args.shards, args.out, device=args.device, dtype=args.dtype,
                             progress=not args.quiet)
    if args.json:
        print_json(index)
    else:
        print(f"embedded {index['totals']['samples']} videos with {index['backbone']} into "
              f"{index['totals']['shards']} shards in {args.out} ({index['totals']['skipped']} skipped, "
              f"{index['totals']['seconds']} s)")
        renamed = index.get("renamed_keys", [])
        if renamed:
            print(f"{len(renamed)} sample key(s) were not safe tar member names and were written renamed (index.json's "
                  "renamed_keys): " + ", ".join(f"{item['key']!r} as {item['as']}" for item in renamed[:5])
                  + (", ..." if len(renamed) > 5 else ""))
    return 0
