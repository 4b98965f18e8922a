"""Parameter counts and FLOPs per clip of the flagship detectors (and small ones), as JSON.

FLOPs and parameters are counted by dfdtrain.models.stats (as `dfdtrain model` does): torch's FlopCounterMode on
one real forward pass (matmuls and convolutions; a multiply-add counts as 2 FLOPs) of one frame through the
backbone, times T frames, plus the head on [1,T,D] features; a clip backbone (head: none) is counted on one whole
clip, and its per-frame figure is that / T. Training costs about 3x the forward FLOPs (forward + backward); the MFU
benchmark divides measured throughput x these FLOPs by the device's peak.

    python benchmarks/model_stats.py --out benchmarks/results/model_stats.json
"""

import argparse
import sys
import time

from common import emit, envelope
from dfdtrain.models.clip_backbones import is_clip_backbone
from dfdtrain.models.detector import build_detector
from dfdtrain.models.stats import count_parameters, forward_flops

DETECTORS = [  # (backbone, head, head options, input size, frames per clip)
    ("EfficientNetB7", "lstm", {"num_layers": 2, "hidden_size": 512, "bidirectional": True}, 600, 16),
    ("EfficientNetB7", "lstm", {"num_layers": 2, "hidden_size": 512, "bidirectional": True}, 380, 16),
    ("ResNet152V2", "attention", {}, 224, 16),
    ("MobileNetV2", "gru", {"num_layers": 1, "hidden_size": 128}, 224, 16),
    ("InceptionV3", "gru", {"num_layers": 2, "hidden_size": 16}, 299, 20),
    # clip backbones: configs/r2plus1d_18_faceclips.yaml, configs/tall_swin_faceclips.yaml
    ("r2plus1d_18", "none", {}, 112, 16),
    ("tall:swin_tiny_patch4_window7_224", "none", {}, 112, 4),
]


def build_case(backbone, head, head_options, size, frames, **options):
    """The detector of a benchmark case; a clip backbone is built for its clip (frames, size)."""
    if is_clip_backbone(backbone):
        options.update(num_frames=frames, image_size=size)
    return build_detector(backbone, head, head_options=head_options, **options)


def describe(backbone, head, head_options, size, frames):
    model = build_case(backbone, head, head_options, size, frames)
    frame_flops, clip_flops = forward_flops(model, size, frames)
    groups = count_parameters(model)["groups"]
    return {
        "backbone": backbone, "timm_name": model.backbone_info.model_name, "head": head,
        "head_options": head_options, "input_size": size, "frames": frames,
        "params_backbone_m": round(groups["backbone"]["total"] / 1e6, 2),
        "params_head_m": round(groups["head"]["total"] / 1e6, 3),
        "gflops_per_frame": round(frame_flops / 1e9, 2),
        "gflops_per_clip_forward": round(clip_flops / 1e9, 1),
        "gflops_per_clip_train": round(3 * clip_flops / 1e9, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here too")
    parser.add_argument("--quick", action="store_true", help="only the small detectors")
    args = parser.parse_args(argv)
    started = time.time()
    chosen = [entry for entry in DETECTORS if not args.quick or entry[0] in ("MobileNetV2",)]
    # FLOP counting runs nothing timed on a device: the result has no "device" key
    result = envelope("model_stats", None, {"quick": args.quick}, started,
                      detectors=[describe(*entry) for entry in chosen])
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
