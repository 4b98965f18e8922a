"""Engine step time: DeepSpeed ZeRO 0/1/2 vs DDP on the same model, in one multi-process job (goal: DeepSpeed
>= 0.97 x DDP throughput); and what a host sync per step costs.

The driver starts ``torchrun --standalone --nproc_per_node N benchmarks/engine.py --worker JOB`` (gloo and
DeepSpeed's CPU accelerator on a CPU, NCCL on GPUs). Every process builds one ``dfdtrain.training.trainer.Trainer``
per variant from an ExperimentConfig (the job's detector, the same seed, the training defaults: AdamW, cosine
schedule; train.engine / zero_stage / precision from the variant), all in the one process group, each fed a
fixed random batch per rank already on the device, and trains with the Trainer's own ``train_step`` (after one
``begin_epoch(0)``). The variants are timed interleaved: ``repeats`` blocks of ``steps`` steps each, after
warm-up; a block's time is the slowest rank's. Ratios are DDP's median step time / each DeepSpeed stage's (> 1:
DeepSpeed is faster).

One more variant, ``ddp_sync_every_step``, is the DDP Trainer with ``trainer.check_finite()`` after every step:
a host wait plus an all-reduce per micro-batch, as the training loop did before it checked only at log steps.
``per_step_sync`` reports it against the DDP Trainer as shipped (``shipped_over_sync_every_step`` > 1: the
shipped loop is faster).

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

from common import benchmark_parser, emit, envelope, median, parse_arguments, resolve_device

REPO = Path(__file__).resolve().parents[1]
# name -> (engine, ZeRO stage): the engines compared in "engines" and "ratios"
ENGINE_VARIANTS = {"ddp": ("ddp", 0), "zero0": ("deepspeed", 0), "zero1": ("deepspeed", 1), "zero2": ("deepspeed", 2)}
# The DDP Trainer with trainer.check_finite() after every train_step (reported apart, in "per_step_sync")
SYNC_VARIANT = "ddp_sync_every_step"
VARIANTS = {**ENGINE_VARIANTS, SYNC_VARIANT: ("ddp", 0)}
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


def experiment_config(job, variant, run_dir):
    """The ExperimentConfig of one variant: the job's detector and batch, the training defaults otherwise."""
    from dfdtrain.checks import experiment_from_dict

    engine_name, zero_stage = VARIANTS[variant]
    model = job["model"]
    return experiment_from_dict({
        "name": f"bench-engine-{variant}", "seed": 0, "run_dir": str(run_dir),  # same seed: same initial weights
        "clip": {"sampler": {"num_frames": model["frames"]}, "image_size": model["size"]},
        "data": {"batch_size": model["clips"]},  # clips per rank
        "model": {"backbone": model["backbone"], "head": model["head"], "head_options": model["head_options"],
                  "channels_last": job["channels_last"]},
        "train": {"engine": engine_name, "zero_stage": zero_stage, "precision": job["precision"],
                  "device": job["device"], "epochs": 1},
    })


def worker(job_path):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from common import timed
    from dfdtrain.core.distributed import cleanup, init_distributed
    from dfdtrain.testing.batches import FixedBatches
    from dfdtrain.training.trainer import Trainer

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    context = init_distributed(job["device"])  # every Trainer below joins this process group
    model_settings = job["model"]
    clips, frames_per_clip, size = model_settings["clips"], model_settings["frames"], model_settings["size"]
    generator = torch.Generator().manual_seed(100 + context.rank)  # each rank its own batch
    batch = {"frames": torch.randn(clips, frames_per_clip, 3, size, size, generator=generator).to(context.device),
             "mask": torch.ones(clips, frames_per_clip, dtype=torch.bool, device=context.device),
             "label": torch.randint(0, 2, (clips,), generator=generator).float().to(context.device),
             "key": [f"rank{context.rank}-clip{index}" for index in range(clips)]}
    steps_per_variant = job["warmup"] + job["repeats"] * job["steps"]  # the learning rate schedule's length

    with tempfile.TemporaryDirectory() as folder:  # run_dir: a Trainer writes nothing there unless it checkpoints
        trainers = {}
        for variant in job["variants"]:
            config = experiment_config(job, variant, Path(folder) / variant)
            trainers[variant] = Trainer(config, train_loader=FixedBatches.repeating(batch, steps_per_variant),
                                        progress=False)
            trainers[variant].begin_epoch(0)

        def run(variant, count):
            trainer, sync_every_step = trainers[variant], variant == SYNC_VARIANT
            for _ in range(count):
                trainer.train_step(batch)
                if sync_every_step:
                    trainer.check_finite()  # loss flag all-reduced and read on the host: a sync per step

        def slowest_rank(seconds):
            value = torch.tensor([seconds], dtype=torch.float64, device=context.device)
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
            return float(value.item())

        for variant in trainers:
            run(variant, job["warmup"])
        times = {variant: [] for variant in trainers}
        for _ in range(job["repeats"]):
            for variant in trainers:
                if torch.distributed.is_initialized():
                    torch.distributed.barrier()
                seconds = timed(lambda: run(variant, job["steps"]), context.device)
                times[variant].append(slowest_rank(seconds) / job["steps"])
        for trainer in trainers.values():
            trainer.check_finite()  # a diverged benchmark model would time different kernels: stop loudly
        if context.is_main:
            result = {"world_size": context.world_size, "backend": context.backend,
                      "threads_per_process": job["threads"], "engines": {}}
            for variant, trainer in trainers.items():
                step_s = median(times[variant])
                engine = trainer.engine
                result["engines"][variant] = {
                    "engine": engine.name, "zero_stage": VARIANTS[variant][1],
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
    parser = benchmark_parser(__doc__, "a tiny detector, 2 repeats of 2 steps (CI)")
    parser.add_argument("--nproc", type=int, default=0, help="processes (default: the GPU count, 2 on a CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per engine (median)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per engine first")
    parser.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)  # set by the driver under torchrun
    args = parse_arguments(parser, argv)
    if args.worker:
        worker(args.worker)
        return 0
    started = time.time()
    device = resolve_device(args.device)
    nproc = args.nproc or default_nproc(device)
    on_gpu = device.type == "cuda"
    job = {"model": MODELS["quick" if args.quick else device.type], "variants": list(VARIANTS),
           "precision": "bf16" if on_gpu else "fp32", "channels_last": on_gpu,
           "repeats": 2 if args.quick else args.repeats, "steps": 2 if args.quick else args.steps,
           "warmup": 1 if args.quick else args.warmup}
    measured = launch(job, nproc, device)
    sync = measured["engines"].pop(SYNC_VARIANT)  # "engines" and "ratios" compare the engines only
    ddp_step = measured["engines"]["ddp"]["median_step_s"]
    ratios = {f"{variant}_over_ddp": round(ddp_step / measured["engines"][variant]["median_step_s"], 3)
              for variant in ENGINE_VARIANTS if variant != "ddp"}
    per_step_sync = {
        "ddp_step_s": ddp_step, "ddp_sync_every_step_step_s": sync["median_step_s"],
        "shipped_over_sync_every_step": round(sync["median_step_s"] / ddp_step, 3),
        "ddp_sync_every_step_samples_per_s": sync["samples_per_s"],
        "ddp_sync_every_step_step_times_s": sync["step_times_s"],
        "what": "the DDP Trainer as shipped (non-finite losses checked at log steps) vs the same with "
                "trainer.check_finite() after every train_step (a host wait + all-reduce per micro-batch); "
                "ratio > 1: the shipped loop is faster",
    }
    result = envelope(
        "engine", device,
        {**job, "quick": args.quick, "nproc": nproc, "optimizer": "AdamW (OptimConfig defaults)",
         "step": "Trainer.train_step (dfdtrain.training.trainer), one Trainer per variant",
         "data": "a fixed random batch per rank, on the device"},
        started, **measured, ratios=ratios,
        goal={"deepspeed_over_ddp_at_least": GOAL_DEEPSPEED_OVER_DDP,
              "met": {name: value >= GOAL_DEEPSPEED_OVER_DDP for name, value in ratios.items()}},
        per_step_sync=per_step_sync)
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
