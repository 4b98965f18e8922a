"""Engine step time: DeepSpeed ZeRO 0/1/2 vs DDP on the same model, in one multi-process job (goal: DeepSpeed
>= 0.97 x DDP throughput).

The driver starts ``torchrun --standalone --nproc_per_node N benchmarks/engine.py --worker JOB`` (gloo and
DeepSpeed's CPU accelerator on a CPU, NCCL on GPUs). Every process builds the four engines with
``dfdtrain.engine.engines.build_engine`` on the same detector (same seed) and the training loop's AdamW
(``build_optimizer``), and trains on a fixed random batch per rank already on the device, through the engine
interface the training loop uses (``micro_step`` / ``forward`` / ``backward`` / ``step``). The engines are
timed interleaved: ``repeats`` blocks of ``steps`` steps each, after warm-up; a block's time is the slowest
rank's. Ratios are DDP's median step time / each DeepSpeed stage's (> 1: DeepSpeed is faster).

    python benchmarks/engine.py [--device auto] [--nproc 2] [--quick] [--out benchmarks/results/engine_cpu.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_device_argument, created, emit, machine, median, resolve_device

REPO = Path(__file__).resolve().parents[1]
# name -> (engine, ZeRO stage)
ENGINE_VARIANTS = {"ddp": ("ddp", 0), "zero0": ("deepspeed", 0), "zero1": ("deepspeed", 1), "zero2": ("deepspeed", 2)}
GOAL_DEEPSPEED_OVER_DDP = 0.97
# The detector each mode trains: small on a CPU; the ResNet152V2 + attention recipe (59M parameters, so
# gradient communication matters) on GPUs.
MODELS = {
    "quick": {"backbone": "mobilenetv2_050", "head": "gru", "head_options": {"hidden_size": 16}, "size": 64,
              "clips": 2, "frames": 4},
    "cpu": {"backbone": "resnet18", "head": "gru", "head_options": {"hidden_size": 128}, "size": 112,
            "clips": 2, "frames": 4},
    "cuda": {"backbone": "ResNet152V2", "head": "attention", "head_options": {}, "size": 224, "clips": 4,
             "frames": 16},
}


# ---------------------------------------------------------------------------------------------------
# Driver side (also used by scaling.py)


def launch(job, nproc, device):
    """Run one torchrun job of ``nproc`` workers; returns rank 0's result dict."""
    threads = max(1, len(os.sched_getaffinity(0)) // nproc) if device.type == "cpu" else 4
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    environment["DS_ACCELERATOR"] = "cuda" if device.type == "cuda" else "cpu"
    # DeepSpeed JIT-builds a small comm op on first use on a CPU (~35 s): cache it in the repository
    environment.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    with tempfile.TemporaryDirectory() as folder:
        job_path, result_path = Path(folder) / "job.json", Path(folder) / "result.json"
        job_path.write_text(json.dumps({**job, "device": device.type, "threads": threads,
                                        "result": str(result_path)}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   __file__, "--worker", str(job_path)]
        # the workers' output (DeepSpeed's logs) goes to stderr: stdout carries only our JSON
        completed = subprocess.run(command, env=environment, stdout=sys.stderr, cwd=REPO)
        if completed.returncode != 0 or not result_path.is_file():
            sys.exit(f"benchmark: the {nproc}-process job failed (exit {completed.returncode}); see the output above")
        return json.loads(result_path.read_text())


def default_nproc(device):
    import torch

    return max(1, torch.cuda.device_count()) if device.type == "cuda" else 2


# ---------------------------------------------------------------------------------------------------
# Worker side (one process per rank, under torchrun)


def build_variant(job, variant, context):
    import torch

    from dfdtrain.config import OptimConfig, TrainConfig
    from dfdtrain.engine.engines import build_engine
    from dfdtrain.engine.optim import LearningRateSchedule, build_optimizer
    from dfdtrain.models.detector import build_detector
    from dfdtrain.models.finetune import parameter_groups

    engine_name, zero_stage = ENGINE_VARIANTS[variant]
    model_settings = job["model"]
    torch.manual_seed(0)  # the same initial weights on every rank and for every engine
    model = build_detector(model_settings["backbone"], model_settings["head"],
                           head_options=model_settings["head_options"], channels_last=job["channels_last"])
    optim = OptimConfig()  # the training default: AdamW, cosine schedule
    optimizer = build_optimizer(parameter_groups(model, optim.lr, optim.weight_decay), optim)
    schedule = LearningRateSchedule(optimizer, optim, total_steps=10 ** 6)
    train = TrainConfig(engine=engine_name, zero_stage=zero_stage, precision=job["precision"])
    return build_engine(engine_name, model, optimizer, schedule, train, context, model_settings["clips"])


def worker(job_path):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from common import timed
    from dfdtrain.engine.distributed import cleanup, init_distributed
    from dfdtrain.engine.train import bce_loss

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    context = init_distributed(job["device"])
    model_settings = job["model"]
    clips, frames_per_clip, size = model_settings["clips"], model_settings["frames"], model_settings["size"]
    generator = torch.Generator().manual_seed(100 + context.rank)  # each rank its own batch
    frames = torch.randn(clips, frames_per_clip, 3, size, size, generator=generator).to(context.device)
    mask = torch.ones(clips, frames_per_clip, dtype=torch.bool, device=context.device)
    labels = torch.randint(0, 2, (clips,), generator=generator).float().to(context.device)
    engines = {variant: build_variant(job, variant, context) for variant in job["variants"]}

    def run(engine, count):
        engine.model.train()
        for _ in range(count):
            with engine.micro_step():
                video_logits, _ = engine.forward(frames, mask)
                engine.backward(bce_loss(video_logits, labels, 0.0, None))
            engine.step()

    def slowest_rank(seconds):
        value = torch.tensor([seconds], dtype=torch.float64, device=context.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return float(value.item())

    for engine in engines.values():
        run(engine, job["warmup"])
    times = {variant: [] for variant in engines}
    for _ in range(job["repeats"]):
        for variant, engine in engines.items():
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            times[variant].append(slowest_rank(timed(lambda: run(engine, job["steps"]), context.device)) / job["steps"])
    if context.is_main:
        result = {"world_size": context.world_size, "backend": context.backend, "threads_per_process": job["threads"],
                  "engines": {}}
        for variant, engine in engines.items():
            step_s = median(times[variant])
            result["engines"][variant] = {
                "engine": engine.name, "zero_stage": ENGINE_VARIANTS[variant][1],
                "median_step_s": round(step_s, 5),
                "samples_per_s": round(clips * context.world_size / step_s, 3),
                "samples_per_s_per_process": round(clips / step_s, 3),
                "step_times_s": [round(value, 5) for value in times[variant]],
                "ddp_wrapped": isinstance(engine.model, DistributedDataParallel) if engine.name == "ddp" else None,
            }
        Path(job["result"]).write_text(json.dumps(result))
    cleanup()


# ---------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    parser.add_argument("--quick", action="store_true", help="a tiny detector, 2 repeats of 2 steps (CI)")
    parser.add_argument("--nproc", type=int, default=0, help="processes (default: the GPU count, 2 on a CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per engine (median)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per engine first")
    parser.add_argument("--out", help="write the JSON result here too")
    parser.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)  # set by the driver under torchrun
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    started = time.time()
    device = resolve_device(args.device)
    nproc = args.nproc or default_nproc(device)
    on_gpu = device.type == "cuda"
    job = {"model": MODELS["quick" if args.quick else device.type], "variants": list(ENGINE_VARIANTS),
           "precision": "bf16" if on_gpu else "fp32", "channels_last": on_gpu,
           "repeats": 2 if args.quick else args.repeats, "steps": 2 if args.quick else args.steps,
           "warmup": 1 if args.quick else args.warmup}
    measured = launch(job, nproc, device)
    ddp_step = measured["engines"]["ddp"]["median_step_s"]
    ratios = {f"{variant}_over_ddp": round(ddp_step / measured["engines"][variant]["median_step_s"], 3)
              for variant in ENGINE_VARIANTS if variant != "ddp"}
    result = {
        "benchmark": "engine", "created": created(), "machine": machine(), "device": device.type,
        "settings": {**job, "quick": args.quick, "nproc": nproc,
                     "optimizer": "AdamW (OptimConfig defaults)", "data": "a fixed random batch per rank, on the device"},
        **measured,
        "ratios": ratios,
        "goal": {"deepspeed_over_ddp_at_least": GOAL_DEEPSPEED_OVER_DDP,
                 "met": {name: value >= GOAL_DEEPSPEED_OVER_DDP for name, value in ratios.items()}},
        "seconds": round(time.time() - started, 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
