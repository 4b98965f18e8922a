"""Model throughput: forward + backward + optimizer step of whole detectors, per backbone x precision x memory format.

Each case is a detector as training builds it (``build_detector``: timm backbone per frame + temporal head, or a
clip backbone) on
random clips [B,T,3,S,S] already on the device; a step is autocast forward (the engines' ``autocast``), BCE
loss (the training objective, ``dfdtrain.models.loss.video_bce``), backward and an SGD step (timm's benchmark
trains with SGD too). For every case the four variants (fp32 / bf16 autocast x NCHW / channels_last) are
built from the same seed and timed interleaved: ``--repeats`` blocks of ``--steps`` steps each, after
``--warmup`` untimed steps; the median block gives samples/s (clips) and frames/s. FLOPs are counted once per case
(``dfdtrain.models.stats.forward_flops``, training = 3 x forward); on a GPU in the peak table MFU = achieved
FLOP/s / the dense peak of the math mode used.

    python benchmarks/model.py [--device auto] [--quick] [--out benchmarks/results/model_cpu.json]
"""

import dataclasses
import sys

import torch

from common import benchmark_parser, emit, envelope, math_mode, median, mfu, progress, start_benchmark, timed
from dfdtrain.core.devices import autocast
from dfdtrain.models.loss import video_bce
from dfdtrain.models.stats import forward_flops
from model_stats import build_case


@dataclasses.dataclass
class Case:
    backbone: str  # a timm name or Keras alias, as in configs
    head: str
    head_options: dict
    size: int  # input pixels (square)
    gpu_batch: tuple  # (clips per step, frames per clip) on a GPU
    cpu_batch: tuple = None  # the same on a CPU; None: GPU only (reason in cpu_skip)
    cpu_skip: str = ""

    @property
    def name(self):
        return f"{self.backbone}@{self.size}"


B7_HEAD = {"num_layers": 2, "hidden_size": 512, "bidirectional": True}  # configs/efficientnet_b7_lstm.yaml
SLOW_ON_CPU = ("a 2-core CPU needs minutes per variant for this backbone at this size; it is measured on GPUs "
               "(run with --device cuda)")
# The flagship detectors of the reference projects, and small ones. EfficientNet-B7@600 with 8 frames per
# step matches timm's published batch of 8 images.
CASES = [
    Case("EfficientNetB7", "lstm", B7_HEAD, 600, gpu_batch=(1, 8), cpu_skip=SLOW_ON_CPU),
    Case("EfficientNetB7", "lstm", B7_HEAD, 380, gpu_batch=(2, 16), cpu_batch=(1, 1)),
    Case("ResNet152V2", "attention", {}, 224, gpu_batch=(4, 16), cpu_batch=(1, 4)),
    Case("efficientnet_b0", "gru", {"hidden_size": 128}, 224, gpu_batch=(8, 16), cpu_batch=(1, 4)),
    Case("MobileNetV2", "gru", {"hidden_size": 128}, 224, gpu_batch=(8, 16), cpu_batch=(1, 8)),
    # clip backbones (configs/r2plus1d_18_faceclips.yaml, configs/tall_swin_faceclips.yaml): clips/s
    Case("r2plus1d_18", "none", {}, 112, gpu_batch=(8, 16), cpu_batch=(1, 16)),
    Case("tall:swin_tiny_patch4_window7_224", "none", {}, 112, gpu_batch=(16, 4), cpu_batch=(1, 4)),
]
QUICK_CASES = [Case("mobilenetv2_050", "gru", {"hidden_size": 16}, 64, gpu_batch=(2, 4), cpu_batch=(2, 4))]

# timm's published training throughput (RTX 3090, AMP, benchmark.py, images/s), for comparison on a GPU.
# timm's efficientnet_b7 is our EfficientNetB7's PyTorch-padded twin (ours is tf_efficientnet_b7: "same"
# padding, slightly slower); their images are our frames.
TIMM_REFERENCE = {
    "EfficientNetB7@600": {"device": "RTX 3090", "precision": "amp", "batch_images": 8,
                           "images_per_s": {"nchw": 31.7, "channels_last": 38.0}},
    "ResNet152V2@224": {"device": "RTX 3090", "precision": "amp", "batch_images": None,
                        "images_per_s": {"nchw": 379.0, "channels_last": 537.0}},
}
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("nchw", "channels_last")


def build_variant(case, batch, memory_format, device):
    torch.manual_seed(0)  # every variant of a case starts from the same weights
    model = build_case(case.backbone, case.head, case.head_options, case.size, batch[1],
                       channels_last=memory_format == "channels_last").to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return model, optimizer


def train_step(model, optimizer, frames, mask, labels, precision, device):
    with autocast(device, precision):
        video_logits, _ = model(frames, mask)
        loss = video_bce(video_logits, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_case(case, batch, device, steps, warmup, repeats):
    """Median seconds per step of each (precision, memory format) variant, timed interleaved."""
    clips, frames_per_clip = batch
    generator = torch.Generator().manual_seed(1)
    frames = torch.randn(clips, frames_per_clip, 3, case.size, case.size, generator=generator).to(device)
    mask = torch.ones(clips, frames_per_clip, dtype=torch.bool, device=device)
    labels = torch.randint(0, 2, (clips,), generator=generator).float().to(device)
    models = {memory_format: build_variant(case, batch, memory_format, device) for memory_format in MEMORY_FORMATS}
    frame_flops, clip_flops = forward_flops(models["nchw"][0], case.size, frames_per_clip)
    variants = [(precision, memory_format) for precision in PRECISIONS for memory_format in MEMORY_FORMATS]

    def run(variant, count):
        precision, memory_format = variant
        model, optimizer = models[memory_format]
        for _ in range(count):
            train_step(model, optimizer, frames, mask, labels, precision, device)

    for variant in variants:  # warm-up: allocator, cuDNN autotuning, oneDNN primitive caches
        timed(lambda: run(variant, warmup), device)
    times = {variant: [] for variant in variants}
    for _ in progress(range(repeats), desc=case.name, unit="repeat"):
        for variant in variants:
            times[variant].append(timed(lambda: run(variant, steps), device) / steps)
    results = []
    for (precision, memory_format), seconds in times.items():
        step_s = median(seconds)
        samples_per_s = clips / step_s
        row = {"precision": precision, "memory_format": memory_format, "median_step_s": round(step_s, 5),
               "samples_per_s": round(samples_per_s, 3), "frames_per_s": round(samples_per_s * frames_per_clip, 2),
               "step_times_s": [round(value, 5) for value in seconds]}
        row.update(mfu(samples_per_s * 3 * clip_flops, machine_gpu(device), math_mode(precision, device)))
        results.append(row)
    models.clear()  # free this case's weights before the next case (GPU memory)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return frame_flops, clip_flops, results


def ratios_for(results):
    """Speed-ups of one variant over another, from the medians of this run."""
    by = {(row["precision"], row["memory_format"]): row["median_step_s"] for row in results}
    return {
        "channels_last_over_nchw_fp32": round(by[("fp32", "nchw")] / by[("fp32", "channels_last")], 3),
        "channels_last_over_nchw_bf16": round(by[("bf16", "nchw")] / by[("bf16", "channels_last")], 3),
        "bf16_over_fp32_nchw": round(by[("fp32", "nchw")] / by[("bf16", "nchw")], 3),
        "bf16_channels_last_over_fp32_nchw": round(by[("fp32", "nchw")] / by[("bf16", "channels_last")], 3),
    }


def compare_with_timm(case, results, device):
    reference = TIMM_REFERENCE.get(case.name)
    if reference is None:
        return None
    comparison = {"timm": reference}
    if device.type != "cuda":
        comparison["ratio"] = None
        comparison["reason"] = "CPU run: timm's figures are GPU (RTX 3090) figures"
        return comparison
    ours = {row["memory_format"]: row["frames_per_s"] for row in results if row["precision"] == "bf16"}
    comparison["ratio"] = {memory_format: round(ours[memory_format] / images, 3)
                           for memory_format, images in reference["images_per_s"].items()}
    comparison["reason"] = (f"frames/s here (bf16 autocast, {machine_gpu(device)}) / timm's images/s on an RTX 3090: "
                            "different GPUs, so this says how far this device is ahead, not a like-for-like check")
    return comparison


def machine_gpu(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def main(argv=None):
    parser = benchmark_parser(__doc__, "one small detector, 2 repeats of 1 step (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant (median)")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed block (default: 10 on a GPU, 1 on a CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps per variant (default: 5 on a GPU, 1 on a CPU)")
    parser.add_argument("--cases", default="", help="comma-separated case names to run, e.g. ResNet152V2@224")
    args, started, device = start_benchmark(parser, argv)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    repeats = 2 if args.quick else args.repeats
    steps = 1 if args.quick else (args.steps or (10 if on_gpu else 1))
    warmup = 1 if args.quick else (args.warmup or (5 if on_gpu else 1))
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {case.name for case in cases}
        if unknown:
            parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in cases)}")
        cases = [case for case in cases if case.name in wanted]
    measured, skipped = [], []
    for case in cases:
        batch = case.gpu_batch if on_gpu else case.cpu_batch
        if batch is None:
            skipped.append({"case": case.name, "reason": case.cpu_skip})
            continue
        frame_flops, clip_flops, results = measure_case(case, batch, device, steps, warmup, repeats)
        measured.append({
            "case": case.name, "backbone": case.backbone, "head": case.head, "head_options": case.head_options,
            "input_size": case.size, "clips_per_step": batch[0], "frames_per_clip": batch[1],
            "gflops_per_frame": round(frame_flops / 1e9, 3), "gflops_per_clip_train": round(3 * clip_flops / 1e9, 3),
            "results": results, "ratios": ratios_for(results), "timm_comparison": compare_with_timm(case, results, device),
        })
    result = envelope(
        "model", device,
        {"quick": args.quick, "repeats": repeats, "steps_per_repeat": steps, "warmup_steps": warmup,
         "step": "autocast forward + BCE + backward + SGD step", "optimizer": "SGD momentum 0.9",
         "flops": "FlopCounterMode forward FLOPs x 3 for training", "torch_threads": torch.get_num_threads(),
         "cudnn_benchmark": on_gpu},
        started, cases=measured, skipped=skipped)
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
