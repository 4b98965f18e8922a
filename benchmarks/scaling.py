"""Scaling: training samples/s at 1, 2, ... processes on this machine, and a projection for 8 GPUs x N nodes.

Measured: the engine benchmark's job (``engine.py``: the real DDP ``Trainer`` and its ``train_step``, a fixed
batch per rank on the device, the slowest rank's time per step) at each process count: CPU processes over gloo
here, one GPU per process where GPUs are lent. The process counts take turns for ``--rounds`` rounds (a load change on a shared machine
hits them alike) and the median over every timed block is kept. Weak scaling: the per-process batch is fixed. On a CPU the processes share the same cores
(threads per process = cores / processes), so the ideal speed-up there is 1, not N; on GPUs it is N.

Projected (written, not measured): 8 GPUs per node x N nodes, from per-GPU throughput (measured on a GPU
when a GPU model result exists, else estimated from timm's published figure), gradient bytes and ring
all-reduce over stated bandwidths, with and without overlap; plus what the loader must deliver per node.
Every number the projection uses is in the JSON (``projection.assumptions``) with where it came from.

    python benchmarks/scaling.py [--device auto] [--quick] [--out benchmarks/results/scaling_cpu.json]
"""

import glob
import json
import sys
from pathlib import Path

from common import PEAK_TFLOPS, benchmark_parser, emit, envelope, median, start_benchmark
from engine import MODELS, default_nproc, launch

RESULTS = Path(__file__).resolve().parent / "results"
H100_SXM_BF16 = next(peaks["bf16"] for _, row, peaks in PEAK_TFLOPS if row == "H100 SXM") * 1e12

# The projected workloads: the flagship recipes (configs/efficientnet_b7_lstm.yaml, resnet152v2_attention.yaml).
# timm_reference: timm's RTX 3090 AMP channels_last training figure (name, images/s, model_stats entry), the
# base of the per-GPU estimate when no GPU result exists.
WORKLOADS = [
    {"name": "EfficientNetB7@380 + LSTM, 16 frames", "model_stats": ("EfficientNetB7", 380), "model_case": "EfficientNetB7@380",
     "frames": 16, "clips_per_gpu": 2, "timm_reference": ("efficientnet_b7@600", 38.0, ("EfficientNetB7", 600)),
     "batch_reason": "2 clips x 16 frames at 380 px: timm fits 8 B7 images at 600 px in 24 GB with AMP; 380 px needs "
                     "0.4x the activations, so ~32 frames fit in 80 GB beside the LSTM"},
    {"name": "ResNet152V2@224 + attention, 16 frames", "model_stats": ("ResNet152V2", 224), "model_case": "ResNet152V2@224",
     "frames": 16, "clips_per_gpu": 8, "timm_reference": ("resnetv2_152@224", 537.0, ("ResNet152V2", 224)),
     "batch_reason": "8 clips x 16 frames = 128 images at 224 px, a usual ResNet-152 batch per 80 GB GPU"},
]
ASSUMPTIONS = {
    "gpus_per_node": 8,
    "gpu": "H100 SXM (HGX, 80 GB)",
    "peak_bf16_tflops": H100_SXM_BF16 / 1e12,
    # Without a GPU result: timm's RTX 3090 figure x the memory bandwidth ratio (H100 SXM HBM3 3.35 TB/s /
    # RTX 3090 GDDR6X 0.936 TB/s). Convolution training at these sizes is bound by memory traffic more than by
    # tensor-core FLOPs; the bf16 peak ratio (989 / 71 = 13.9x) would overstate the H100.
    "h100_over_rtx3090_speed": round(3.35 / 0.936, 3),
    "gradient_bytes_per_parameter": 4,  # DDP all-reduces fp32 gradients (autocast keeps fp32 master weights)
    "intra_node_allreduce_bus_gb_s": 360.0,  # NVLink 4 / NVSwitch; NCCL all_reduce_perf bus bandwidth on HGX H100
    "inter_node_allreduce_bus_gb_s": 40.0,  # one 400 Gb/s NDR InfiniBand NIC per GPU (50 GB/s) at 80% efficiency
    "backward_share_of_compute": 2 / 3,  # backward ~ 2x forward: the time DDP can hide gradient buckets behind
    "mean_video_bytes": 3.7e6,  # DFDC: ~470 GB over ~128k clips; read once per sampled clip from the shards
    "nodes": [1, 2, 4, 8, 16],
    "allreduce_model": "ring: each GPU sends and receives 2(n-1)/n x gradient bytes over its slowest link",
    "overlap_model": "optimistic: exposed = max(0, allreduce - backward); pessimistic: no overlap (exposed = allreduce)",
}


def measure(device, quick, rounds, repeats, steps):
    """Samples/s of the DDP Trainer at each process count that fits this machine."""
    most = default_nproc(device)
    counts = [1, 2] if device.type == "cpu" else [n for n in (1, 2, 4, 8) if n <= most]
    model = MODELS["quick" if quick else device.type]
    job = {"model": model, "variants": ["ddp"], "precision": "bf16" if device.type == "cuda" else "fp32",
           "channels_last": device.type == "cuda", "repeats": repeats, "steps": steps, "warmup": 1 if quick else 2}
    step_times, facts = {nproc: [] for nproc in counts}, {}
    for _ in range(rounds):
        for nproc in counts:
            measured = launch(job, nproc, device)
            step_times[nproc] += measured["engines"]["ddp"]["step_times_s"]
            facts[nproc] = (measured["threads_per_process"], measured["backend"])
    runs = []
    for nproc in counts:
        step_s = median(step_times[nproc])
        clips = model["clips"]
        runs.append({"processes": nproc, "threads_per_process": facts[nproc][0], "backend": facts[nproc][1],
                     "median_step_s": round(step_s, 5), "samples_per_s": round(clips * nproc / step_s, 3),
                     "samples_per_s_per_process": round(clips / step_s, 3), "step_times_s": step_times[nproc]})
    ideal_per_process = 0 if device.type == "cpu" else 1  # CPU processes share the cores; GPUs add hardware
    for run in runs:
        speedup = run["samples_per_s"] / runs[0]["samples_per_s"]
        ideal = 1 + ideal_per_process * (run["processes"] - 1)
        run.update(speedup_over_1=round(speedup, 3), ideal_speedup=ideal, efficiency=round(speedup / ideal, 3))
    return {"model": model, "runs": runs}


# ---------------------------------------------------------------------------------------------------
# Projection


def model_stats_entry(backbone, size, frames):
    """(gflops per clip for training, parameters) from results/model_stats.json, else counted now."""
    path = RESULTS / "model_stats.json"
    if path.is_file():
        for entry in json.loads(path.read_text())["detectors"]:
            if entry["backbone"] == backbone and entry["input_size"] == size and entry["frames"] == frames:
                parameters = (entry["params_backbone_m"] + entry["params_head_m"]) * 1e6
                return entry["gflops_per_clip_train"], parameters, entry["gflops_per_frame"], str(path.relative_to(RESULTS.parent.parent))
    from model_stats import DETECTORS, describe

    for entry in DETECTORS:
        if entry[0] == backbone and entry[3] == size:
            row = describe(backbone, entry[1], entry[2], size, frames)
            return (row["gflops_per_clip_train"], (row["params_backbone_m"] + row["params_head_m"]) * 1e6,
                    row["gflops_per_frame"], "counted now (model_stats.describe)")
    raise SystemExit(f"scaling: no FLOP count for {backbone}@{size}")


def measured_gpu_throughput(case):
    """(clips/s per GPU, source) from a GPU model benchmark result (bf16, channels_last), if one exists."""
    for path in sorted(glob.glob(str(RESULTS / "model_*.json"))):
        result = json.loads(Path(path).read_text())
        if result.get("benchmark") != "model" or not result["machine"].get("gpu"):
            continue
        for entry in result["cases"]:
            if entry["case"] == case:
                row = next(row for row in entry["results"]
                           if row["precision"] == "bf16" and row["memory_format"] == "channels_last")
                return row["samples_per_s"], f"measured: {Path(path).name} on {result['machine']['gpu']}"
    return None, None


def pyav_decode_rate():
    """(sampled 16-frame 1080p H.264 videos/s per decode process, source) from the decode benchmark."""
    path = RESULTS / "decode_cpu.json"
    if not path.is_file():
        return None, "no benchmarks/results/decode_cpu.json"
    result = json.loads(path.read_text())
    for comparison in result["comparisons"]:
        if comparison["height"] >= 1080 or comparison["width"] >= 1080:
            rate = comparison["methods"]["pyav"]["videos_per_s"]
            return rate, (f"decode_cpu.json: pyav on {comparison['video']} ({comparison['width']}x{comparison['height']} "
                          f"{comparison['codec']}) on {result['machine']['cpu']}")
    return None, "decode_cpu.json has no 1080p clip"


def allreduce_seconds(gradient_bytes, gpus):
    if gpus == 1:
        return 0.0
    bandwidth = (ASSUMPTIONS["intra_node_allreduce_bus_gb_s"] if gpus <= ASSUMPTIONS["gpus_per_node"]
                 else ASSUMPTIONS["inter_node_allreduce_bus_gb_s"]) * 1e9
    return 2 * (gpus - 1) / gpus * gradient_bytes / bandwidth


def project_workload(workload, decode_rate):
    backbone, size = workload["model_stats"]
    gflops_train, parameters, gflops_frame, flops_source = model_stats_entry(backbone, size, workload["frames"])
    per_gpu, throughput_source = measured_gpu_throughput(workload["model_case"])
    if per_gpu is None:
        reference_name, images_per_s, (ref_backbone, ref_size) = workload["timm_reference"]
        _, _, ref_gflops_frame, _ = model_stats_entry(ref_backbone, ref_size, 16)
        # timm's images/s, scaled to an H100 and then to this workload's frame size by FLOPs per frame
        frames_per_s = images_per_s * ASSUMPTIONS["h100_over_rtx3090_speed"] * ref_gflops_frame / gflops_frame
        per_gpu = frames_per_s / workload["frames"]
        throughput_source = (f"estimated (no GPU result): timm's RTX 3090 AMP channels_last {reference_name} "
                             f"{images_per_s} img/s x {ASSUMPTIONS['h100_over_rtx3090_speed']} (memory bandwidth "
                             f"H100/3090) x {ref_gflops_frame}/{gflops_frame} GFLOPs per frame")
    implied_mfu = per_gpu * gflops_train * 1e9 / H100_SXM_BF16
    gradient_bytes = parameters * ASSUMPTIONS["gradient_bytes_per_parameter"]
    compute_s = workload["clips_per_gpu"] / per_gpu
    backward_s = compute_s * ASSUMPTIONS["backward_share_of_compute"]
    rows = []
    for nodes in ASSUMPTIONS["nodes"]:
        gpus = nodes * ASSUMPTIONS["gpus_per_node"]
        allreduce = allreduce_seconds(gradient_bytes, gpus)
        step_overlap = compute_s + max(0.0, allreduce - backward_s)
        step_serial = compute_s + allreduce
        clips_overlap = gpus * workload["clips_per_gpu"] / step_overlap
        rows.append({
            "nodes": nodes, "gpus": gpus, "allreduce_s": round(allreduce, 5),
            "step_s_overlap": round(step_overlap, 5), "step_s_no_overlap": round(step_serial, 5),
            "efficiency_overlap": round(compute_s / step_overlap, 3),
            "efficiency_no_overlap": round(compute_s / step_serial, 3),
            "clips_per_s_overlap": round(clips_overlap, 1),
            "clips_per_s_no_overlap": round(gpus * workload["clips_per_gpu"] / step_serial, 1),
            "frames_per_s_overlap": round(clips_overlap * workload["frames"], 1),
            "dfdc_epoch_minutes_overlap": round(128_000 / clips_overlap / 60, 2),
        })
    per_node_clips = per_gpu * ASSUMPTIONS["gpus_per_node"]
    return {
        "workload": workload["name"], "frames_per_clip": workload["frames"], "clips_per_gpu": workload["clips_per_gpu"],
        "batch_reason": workload["batch_reason"], "gflops_per_clip_train": gflops_train, "flops_source": flops_source,
        "parameters": int(parameters), "gradient_mb": round(gradient_bytes / 1e6, 1),
        "clips_per_s_per_gpu": round(per_gpu, 2), "throughput_source": throughput_source,
        "implied_h100_mfu": round(implied_mfu, 4),
        "compute_s_per_step": round(compute_s, 5),
        "loader_per_node": {
            "clips_per_s": round(per_node_clips, 1),
            "storage_read_gb_s": round(per_node_clips * ASSUMPTIONS["mean_video_bytes"] / 1e9, 3),
            "pyav_decode_processes": round(per_node_clips / decode_rate, 1) if decode_rate else None,
        },
        "nodes": rows,
    }


def projection_text(workloads, decode_source):
    lines = [
        f"Projection for {ASSUMPTIONS['gpus_per_node']} x {ASSUMPTIONS['gpu']} per node, weak scaling (fixed clips per "
        "GPU), DDP gradient all-reduce. Assumptions: fp32 gradients (4 bytes/parameter); ring all-reduce "
        f"(2(n-1)/n x gradient bytes per GPU); all-reduce bus bandwidth {ASSUMPTIONS['intra_node_allreduce_bus_gb_s']:.0f} "
        f"GB/s inside a node (NVLink/NVSwitch) and {ASSUMPTIONS['inter_node_allreduce_bus_gb_s']:.0f} GB/s across nodes "
        "(one 400 Gb/s InfiniBand NIC per GPU at 80%); backward = 2/3 of compute, which bounds how much all-reduce "
        "DDP can hide (optimistic column), or none hidden (pessimistic); the loader keeps up (see below).",
    ]
    for workload in workloads:
        one, last = workload["nodes"][0], workload["nodes"][-1]
        loader = workload["loader_per_node"]
        decode = (f"~{loader['pyav_decode_processes']:.0f} PyAV decode processes per node (16 sampled frames of "
                  "1080p H.264 each) or NVDEC via DALI" if loader["pyav_decode_processes"] else
                  f"(no PyAV rate: {decode_source})")
        lines.append(
            f"{workload['workload']}: {workload['clips_per_s_per_gpu']} clips/s per GPU ({workload['throughput_source']}); "
            f"{workload['gradient_mb']} MB of gradients per step; efficiency {one['efficiency_overlap']:.2f} on 1 node and "
            f"{last['efficiency_overlap']:.2f} (optimistic) / {last['efficiency_no_overlap']:.2f} (pessimistic) on "
            f"{last['nodes']} nodes ({last['gpus']} GPUs, {last['clips_per_s_overlap']:.0f} clips/s, a DFDC epoch of "
            f"128k clips in {last['dfdc_epoch_minutes_overlap']:.1f} min). Each node must read "
            f"{loader['storage_read_gb_s']:.2f} GB/s of shards and decode {loader['clips_per_s']:.0f} clips/s: {decode}.")
    return lines


def main(argv=None):
    parser = benchmark_parser(__doc__, "a tiny detector, 2 repeats of 2 steps (CI)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of every process count (jobs interleaved)")
    parser.add_argument("--repeats", type=int, default=4, help="timed blocks per process count and round")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    args, started, device = start_benchmark(parser, argv)
    measured = measure(device, args.quick, 1 if args.quick else args.rounds, 2 if args.quick else args.repeats,
                       2 if args.quick else args.steps)
    decode_rate, decode_source = pyav_decode_rate()
    workloads = [project_workload(workload, decode_rate) for workload in WORKLOADS]
    result = envelope(
        "scaling", device,
        {"quick": args.quick, "engine": "ddp", "scaling": "weak (fixed batch per process)",
         "rounds": 1 if args.quick else args.rounds, "step": "Trainer.train_step (dfdtrain.training.trainer)",
         "data": "a fixed random batch per rank, on the device"},
        started,
        measured=measured,
        projection={"assumptions": {**ASSUMPTIONS, "pyav_decode_videos_per_s": decode_rate,
                                    "pyav_decode_source": decode_source},
                    "workloads": workloads, "text": projection_text(workloads, decode_source)})
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
