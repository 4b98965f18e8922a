"""dfdtrain model: what a config builds, without training: backbone, fine-tuning method, parameter counts, FLOPs per
clip, the input it expects and the checkpoint size."""

from dfdtrain.commands._common import print_json

HELP = "describe the detector a config builds (parameters, trainable parts, FLOPs per clip, input, checkpoint size)"


def add_arguments(parser):
    parser.add_argument("--config", help="experiment YAML (see configs/)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value (e.g. model.pretrained=false)")


def describe_model(config):
    """The description of the detector of an ExperimentConfig (what ``--json`` prints), built on the CPU."""
    from dfdtrain.models.detector import build_detector_from_config
    from dfdtrain.models.finetune_methods import finetune_method, trained_phases
    from dfdtrain.models.stats import CHANNELS, clip_flops, count_parameters, state_bytes

    model = build_detector_from_config(config.model, config.clip)
    info = model.backbone_info
    clip = config.clip.resolve(info.data_config)
    embeddings = config.data.source == "embeddings"
    phases = trained_phases(model, config.finetune, backbone_runs=not embeddings)
    trainable = phases[-1][1]  # every parameter that trains at some point
    frame_flops, flops = clip_flops(model, clip)
    method = finetune_method(config.finetune)
    frozen = config.finetune.freeze_backbone or embeddings
    checkpoint = {"full": state_bytes(model)}
    if frozen or config.finetune.method != "full":
        checkpoint["trainable"] = state_bytes(model, trainable)
    return {
        "backbone": {"name": info.name, "model_name": info.model_name, "kind": info.kind,
                     "num_features": info.num_features, "pretrained": info.pretrained, "note": info.note},
        "head": config.model.head, "head_options": config.model.head_options,
        "finetune": {"method": method, "name": config.finetune.method, "unfreeze_last": config.finetune.unfreeze_last,
                     "backbone_trains": not frozen,
                     "phases": [{"first_epoch": epoch, "trainable": sum(p.numel() for p in params)}
                                for epoch, params in phases]},
        "params": count_parameters(model, trainable),
        "flops": {"per_frame": int(frame_flops), "per_clip_forward": int(flops), "per_clip_train": int(3 * flops)},
        "input": {"frames": clip.sampler.num_frames, "channels": CHANNELS, "image_size": clip.image_size,
                  "clip_shape": [clip.sampler.num_frames, CHANNELS, clip.image_size, clip.image_size],
                  "crop": clip.crop, "sampler": clip.sampler.mode, "mean": list(clip.mean), "std": list(clip.std),
                  "input_transform": clip.input_transform, "source": config.data.source},
        "checkpoint_bytes": checkpoint,
    }


def _count(value):
    """A parameter count for people: 2.54M, 52.3k, 812."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(value)


def _bytes(value):
    for scale, suffix in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if value >= scale:
            return f"{value / scale:.1f} {suffix}"
    return f"{value} B"


def _lines(description):
    backbone, params, flops, data = (description[key] for key in ("backbone", "params", "flops", "input"))
    finetune, checkpoint = description["finetune"], description["checkpoint_bytes"]
    name = backbone["name"] + (f" ({backbone['model_name']})" if backbone["model_name"] != backbone["name"] else "")
    share = params["trainable"] / params["total"] if params["total"] else 0.0
    method = finetune["method"]
    if finetune["unfreeze_last"] >= 0 and finetune["backbone_trains"]:
        method += f", last {finetune['unfreeze_last']} backbone stage(s)"
    if description["input"]["source"] == "embeddings":
        method += " (cached features: the backbone is not run)"
    rows = [("backbone", f"{name}, {backbone['kind']}, {backbone['num_features']} features, "
                         f"weights: {backbone['pretrained']}"),
            ("head", description["head"]),
            ("fine-tuning", method)]
    if len(finetune["phases"]) > 1:
        rows += [(f"  from epoch {phase['first_epoch'] + 1}", f"{phase['trainable']:,} trainable")
                 for phase in finetune["phases"]]
    rows += [("parameters", f"{params['total']:,} ({_count(params['total'])})"),
             ("trainable", f"{params['trainable']:,} ({100 * share:.2f}%)")]
    rows += [(f"  {part}", f"{group['total']:,} total, {group['trainable']:,} trainable")
             for part, group in params["groups"].items()]
    rows += [("FLOPs per clip", f"{flops['per_clip_forward'] / 1e9:.3f} G forward, "
                                f"~{flops['per_clip_train'] / 1e9:.3f} G training (3x)"),
             ("FLOPs per frame", f"{flops['per_frame'] / 1e9:.3f} G"),
             ("input", f"[B,{data['frames']},{data['channels']},{data['image_size']},{data['image_size']}], "
                       f"{data['sampler']} sampler, crop {data['crop']}, {data['input_transform']}"),
             ("normalisation", "mean " + ", ".join(f"{v:.4f}" for v in data["mean"]) + "; std "
              + ", ".join(f"{v:.4f}" for v in data["std"])),
             ("checkpoint", f"{_bytes(checkpoint['full'])} ({checkpoint['full']:,} bytes, state_dict)")]
    if "trainable" in checkpoint:
        rows.append(("  trainable part", f"{_bytes(checkpoint['trainable'])} ({checkpoint['trainable']:,} bytes)"))
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]


def run(args):
    from dfdtrain.checks import load_experiment

    description = describe_model(load_experiment(args.config, args.overrides))
    if args.json:
        print_json(description)
    else:
        print("\n".join(_lines(description)))
    return 0
