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

Fine-tuning method cases (``BACKBONE@SIZE+METHOD``): one per ``finetune.method`` of the registry
(``dfdtrain.models.finetune_methods.FINETUNE_METHODS``, so a new method gets its case without an edit here), the
method applied as the Trainer applies it (``apply_finetune``: requires_grad, wrapped layers, its regularizer added
to the loss), SGD over the parameters that train; bf16 autocast only, and NCHW only where channels_last does not
apply (a ViT: said in the case's ``memory_formats_note`` instead of timing a no-op). MFU convention, for every
case and method: 3 x the forward FLOPs of the model as built (the method's own layers included), as if every
weight had a gradient; a frozen base skips its weight gradients (~2 x forward + the trained layers' share), so
for those methods MFU is model-FLOPs utilisation, above what the hardware did. ViT-L/14 cases are GPU cases: on a
CPU they run only when named in ``--cases``; the ViT-Tiny ones (``vit_tiny_patch16_224@224+METHOD``) run only
when named, anywhere (quick checks, tests).

    python benchmarks/model.py [--device auto] [--quick] [--cases NAME,...] [--out benchmarks/results/model_cpu.json]
"""

import dataclasses
import sys

import torch

from common import benchmark_parser, emit, envelope, math_mode, median, mfu, progress, start_benchmark, timed
from dfdtrain.config import FinetuneConfig
from dfdtrain.core.devices import autocast
from dfdtrain.models.finetune_methods import FINETUNE_METHODS, apply_finetune, finetune_method
from dfdtrain.models.loss import video_bce
from dfdtrain.models.stats import count_parameters, forward_flops
from model_stats import build_case

PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("nchw", "channels_last")


@dataclasses.dataclass
class Case:
    backbone: str  # a timm name or Keras alias, as in configs
    head: str
    head_options: dict
    size: int  # input pixels (square)
    gpu_batch: tuple  # (clips per step, frames per clip) on a GPU
    cpu_batch: tuple = None  # the same on a CPU; None: GPU only (reason in cpu_skip)
    cpu_skip: str = ""
    method: str = None  # a finetune.method applied before the optimizer is built; None: every parameter trains
    cpu_when_named: bool = False  # on a CPU only when named in --cases (else skipped, reason in cpu_skip)
    precisions: tuple = PRECISIONS
    memory_formats: tuple = MEMORY_FORMATS
    memory_formats_note: str = ""  # why a memory format is not timed

    @property
    def name(self):
        return f"{self.backbone}@{self.size}" + (f"+{self.method}" if self.method else "")


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
VIT_CHANNELS_LAST = ("channels_last not timed: it does not apply to a ViT (its one convolution is the patch embedding "
                     "on the input; every other layer works on [batch, tokens, width] sequences, which have no "
                     "channels_last layout), so it would time the NCHW model again")
VIT_L_ON_CPU = ("ViT-L/14 (~300M parameters) needs ~30 s per step at batch 1 on a 2-core CPU (and a minute to build "
                "and count): a GPU case; name it in --cases to run it here")


def vit_method_cases(backbone, size, gpu_batch, cpu_batch, **options):
    """One case per registered finetune.method (registration order): forward + backward + SGD step in bf16 autocast,
    NCHW only (``options``: e.g. cpu_when_named). A per-frame GenD-style detector: the backbone, then the mean
    head (masked mean of the frame features -> dense stack)."""
    return [Case(backbone, "mean", {}, size, gpu_batch=gpu_batch, cpu_batch=cpu_batch, method=method,
                 precisions=("bf16",), memory_formats=("nchw",), memory_formats_note=VIT_CHANNELS_LAST, **options)
            for method in FINETUNE_METHODS]


# ViT-L/14 (CLIP's, untrained: timm pretrained=False) with each fine-tuning method: 32 frames per step on a GPU.
CASES += vit_method_cases("vit_large_patch14_clip_224", 224, gpu_batch=(4, 8), cpu_batch=(1, 1), cpu_when_named=True,
                      cpu_skip=VIT_L_ON_CPU)
QUICK_CASES = [Case("mobilenetv2_050", "gru", {"hidden_size": 16}, 64, gpu_batch=(2, 4), cpu_batch=(2, 4))]
# Run only when named in --cases (with or without --quick): the method cases on a small ViT.
NAMED_ONLY_CASES = vit_method_cases("vit_tiny_patch16_224", 224, gpu_batch=(8, 8), cpu_batch=(1, 1))

# timm's published training throughput (RTX 3090, AMP, benchmark.py, images/s), for comparison on a GPU.
# timm's efficientnet_b7 is our EfficientNetB7's PyTorch-padded twin (ours is tf_efficientnet_b7: "same"
# padding, slightly slower); their images are our frames.
TIMM_REFERENCE = {
    "EfficientNetB7@600": {"device": "RTX 3090", "precision": "amp", "batch_images": 8,
                           "images_per_s": {"nchw": 31.7, "channels_last": 38.0}},
    "ResNet152V2@224": {"device": "RTX 3090", "precision": "amp", "batch_images": None,
                        "images_per_s": {"nchw": 379.0, "channels_last": 537.0}},
}


def build_variant(case, batch, memory_format, device):
    """(model, optimizer, regularizer): the case's detector on ``device`` with its finetune.method applied (None:
    no method, every parameter trains), SGD over the parameters that train."""
    torch.manual_seed(0)  # every variant of a case starts from the same weights
    model = build_case(case.backbone, case.head, case.head_options, case.size, batch[1],
                       channels_last=memory_format == "channels_last").to(device).train()
    regularizer = apply_finetune(model, FinetuneConfig(method=case.method)) if case.method else None
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-4, momentum=0.9)
    return model, optimizer, regularizer


def train_step(model, optimizer, regularizer, frames, mask, labels, precision, device):
    with autocast(device, precision):
        video_logits, _ = model(frames, mask)
        loss = video_bce(video_logits, labels)
        if regularizer is not None:  # as the Trainer adds it (e.g. svd_residual's terms)
            loss = loss + regularizer()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_case(case, batch, device, steps, warmup, repeats):
    """(frame FLOPs, clip FLOPs, parameter counts, rows): median seconds per step of each (precision, memory
    format) variant of the case, timed interleaved."""
    clips, frames_per_clip = batch
    generator = torch.Generator().manual_seed(1)
    frames = torch.randn(clips, frames_per_clip, 3, case.size, case.size, generator=generator).to(device)
    mask = torch.ones(clips, frames_per_clip, dtype=torch.bool, device=device)
    labels = torch.randint(0, 2, (clips,), generator=generator).float().to(device)
    models = {memory_format: build_variant(case, batch, memory_format, device) for memory_format in case.memory_formats}
    first = models[case.memory_formats[0]][0]
    frame_flops, clip_flops = forward_flops(first, case.size, frames_per_clip)  # the method's own layers included
    parameters = count_parameters(first)
    variants = [(precision, memory_format) for precision in case.precisions for memory_format in case.memory_formats]

    def run(variant, count):
        precision, memory_format = variant
        model, optimizer, regularizer = models[memory_format]
        for _ in range(count):
            train_step(model, optimizer, regularizer, frames, mask, labels, precision, device)

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
    return frame_flops, clip_flops, parameters, results


RATIOS = {  # name: (the slower variant, the faster one)
    "channels_last_over_nchw_fp32": (("fp32", "nchw"), ("fp32", "channels_last")),
    "channels_last_over_nchw_bf16": (("bf16", "nchw"), ("bf16", "channels_last")),
    "bf16_over_fp32_nchw": (("fp32", "nchw"), ("bf16", "nchw")),
    "bf16_channels_last_over_fp32_nchw": (("fp32", "nchw"), ("bf16", "channels_last")),
}


def ratios_for(results):
    """Speed-ups of one variant over another, from the medians of this run (those whose two variants ran)."""
    by = {(row["precision"], row["memory_format"]): row["median_step_s"] for row in results}
    return {name: round(by[base] / by[other], 3) for name, (base, other) in RATIOS.items()
            if base in by and other in by}


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


MFU_CONVENTION = (
    "model FLOPs: 3 x forward FLOPs per clip (the model as built, a method's own layers included) for every case "
    "and every finetune.method; a frozen base (layernorm, lora, ...) skips its weights' gradients, so its step does "
    "~2 x forward + the trained layers' share and its MFU is above the hardware's utilisation; MFU = clips/s x "
    "3 x forward FLOPs per clip / the dense peak of the device (device_name) in the math mode (peak_row, "
    "peak_mode); null on a CPU")


def method_description(method):
    """A finetune.method in words (``dfdtrain model``'s), with its default keys; None for a case with no method."""
    if not method:
        return None
    text = finetune_method(FinetuneConfig(method=method))
    return text if text.startswith(method) else method  # a method finetune_method does not describe yet


def machine_gpu(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def main(argv=None):
    parser = benchmark_parser(__doc__, "one small detector, 2 repeats of 1 step (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant (median)")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed block (default: 10 on a GPU, 1 on a CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps per variant (default: 5 on a GPU, 1 on a CPU)")
    parser.add_argument("--cases", default="", help="comma-separated case names to run instead of the default set "
                        "(any known case, with or without --quick), e.g. ResNet152V2@224,vit_large_patch14_clip_224@224"
                        "+lora")
    args, started, device = start_benchmark(parser, argv)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    repeats = 2 if args.quick else args.repeats
    steps = 1 if args.quick else (args.steps or (10 if on_gpu else 1))
    warmup = 1 if args.quick else (args.warmup or (5 if on_gpu else 1))
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        known = {case.name: case for case in [*CASES, *QUICK_CASES, *NAMED_ONLY_CASES]}
        wanted = list(dict.fromkeys(args.cases.split(",")))
        unknown = [name for name in wanted if name not in known]
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
        cases = [known[name] for name in wanted]
    measured, skipped = [], []
    for case in cases:
        batch = case.gpu_batch if on_gpu else case.cpu_batch
        if not on_gpu and case.cpu_when_named and not args.cases:
            batch = None
        if batch is None:
            skipped.append({"case": case.name, "reason": case.cpu_skip})
            continue
        frame_flops, clip_flops, parameters, results = measure_case(case, batch, device, steps, warmup, repeats)
        measured.append({
            "case": case.name, "backbone": case.backbone, "head": case.head, "head_options": case.head_options,
            "method": case.method, "method_description": method_description(case.method),
            "input_size": case.size, "clips_per_step": batch[0], "frames_per_clip": batch[1],
            "params_total": parameters["total"], "params_trainable": parameters["trainable"],
            "gflops_per_frame": round(frame_flops / 1e9, 3), "gflops_per_clip_forward": round(clip_flops / 1e9, 3),
            "gflops_per_clip_train": round(3 * clip_flops / 1e9, 3),
            "memory_formats": list(case.memory_formats), "memory_formats_note": case.memory_formats_note or None,
            "results": results, "ratios": ratios_for(results),
            "timm_comparison": compare_with_timm(case, results, device),
        })
    result = envelope(
        "model", device,
        {"quick": args.quick, "repeats": repeats, "steps_per_repeat": steps, "warmup_steps": warmup,
         "step": "autocast forward + BCE (+ the method's regularizer) + backward + SGD step",
         "optimizer": "SGD momentum 0.9 over the parameters that train",
         "flops": "FlopCounterMode forward FLOPs x 3 for training", "mfu_convention": MFU_CONVENTION,
         "device_name": machine_gpu(device), "torch_threads": torch.get_num_threads(), "cudnn_benchmark": on_gpu},
        started, cases=measured, skipped=skipped)
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
