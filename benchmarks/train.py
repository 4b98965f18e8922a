"""End to end: steps/s of the real training loop with real data vs the same loop fed by one batch already on the
device. The ratio (real / synthetic) says whether the loader starves the model (goal >= 0.95).

Both modes run ``dfdtrain.training.trainer.Trainer(config, train_loader=...).train()`` on the same config
(dfdtrain's own generated clips, synth -> index -> shard); the real mode lets the Trainer build its VideoLoader,
the synthetic mode passes ``train_loader=``: one real batch from the same kind of loader (``VideoLoader`` over
the same shards, clip spec and data settings), kept on the device and yielded ``len(loader)`` times, so decode,
transfer and augmentation drop out and nothing else changes. Throughput comes from the loop's own log lines
(``metrics.jsonl``: samples/s per window of ``log_every`` steps, timed between loss syncs); the first window (worker start-up, first allocations) is
dropped and the median of the rest kept per run. Runs alternate real / synthetic; the ratio is the median over
the pairs of adjacent runs (real run i / synthetic run i), so a load change on a shared machine between pairs
cancels out; the medians of each mode are reported too.

    python benchmarks/train.py [--device auto] [--quick] [--out benchmarks/results/train_cpu.json]
"""

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from common import (benchmark_parser, emit, envelope, make_synth_shards, median, progress, settings_for,
                    start_benchmark)
from dfdtrain.checks import experiment_from_dict
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.testing.batches import FixedBatches
from dfdtrain.training.trainer import Trainer
from dfdtrain.models.detector import build_detector_from_config

GOAL_REAL_OVER_SYNTHETIC = 0.95
SETTINGS = {
    "quick": {"videos": 12, "video_frames": 24, "width": 64, "height": 64, "backbone": "mobilenetv2_050",
              "head": "gru", "head_options": {"hidden_size": 16}, "num_frames": 4, "image_size": 64, "batch_size": 2,
              "num_workers": 1, "log_every": 2, "windows": 3, "repeats": 1},
    "cpu": {"videos": 32, "video_frames": 48, "width": 128, "height": 128, "backbone": "mobilenetv3_small_100",
            "head": "gru", "head_options": {"hidden_size": 64}, "num_frames": 8, "image_size": 112, "batch_size": 4,
            "num_workers": 1, "log_every": 4, "windows": 4, "repeats": 5},
    # the ResNet152V2 + attention recipe: fast enough per frame on a GPU for the loader to matter
    "cuda": {"videos": 96, "video_frames": 96, "width": 640, "height": 480, "backbone": "ResNet152V2",
             "head": "attention", "head_options": {}, "num_frames": 16, "image_size": 224, "batch_size": 4,
             "num_workers": 8, "log_every": 10, "windows": 5, "repeats": 3},
}


def experiment(settings, shards, run_dir, device, engine):
    steps = settings["log_every"] * settings["windows"]
    on_gpu = device.type == "cuda"
    return experiment_from_dict({
        "name": "bench-train", "seed": 0, "run_dir": str(run_dir),
        "clip": {"sampler": {"mode": "uniform", "num_frames": settings["num_frames"]},
                 "image_size": settings["image_size"], "crop": "face"},
        "data": {"train_shards": f"{shards}/train-*.tar", "val_shards": f"{shards}/val-*.tar",
                 "batch_size": settings["batch_size"], "num_workers": settings["num_workers"],
                 "decoder": "auto", "epoch_samples": steps * settings["batch_size"], "augment": {"enabled": True}},
        "model": {"backbone": settings["backbone"], "head": settings["head"], "head_options": settings["head_options"],
                  "channels_last": on_gpu},
        "train": {"engine": engine, "epochs": 1, "log_every": settings["log_every"], "device": device.type,
                  "precision": "bf16" if on_gpu else "fp32"},
    })


def one_batch_on_device(config, device):
    """The first batch of the same training loader the Trainer builds, and that loader's length."""
    clip = config.clip.resolve(build_detector_from_config(config.model, config.clip).backbone_info.data_config)
    loader = VideoLoader(config.data.train_shards, clip, config.data, train=True, device=device, seed=config.seed)
    batches = iter(loader)
    batch = next(batches)
    batches.close()  # stops the DataLoader workers
    return batch, len(loader)


def run_once(config, train_loader):
    """(median samples/s over the loop's log windows after the first, the whole epoch's samples/s)."""
    with contextlib.redirect_stdout(sys.stderr):  # the loop prints its evaluation tables; stdout is for JSON
        report = Trainer(config, train_loader=train_loader, progress=False).train(resume="never")
    rows = [json.loads(line) for line in (Path(config.run_dir) / "metrics.jsonl").read_text().splitlines()]
    windows = [row["samples_per_s"] for row in rows if row["kind"] == "train"]
    return median(windows[1:]), report["throughput"]["samples_per_s"], windows


def main(argv=None):
    parser = benchmark_parser(__doc__, "a tiny detector, one run per mode (CI)")
    parser.add_argument("--engine", choices=("ddp", "deepspeed"), default="ddp", help="training engine (default ddp)")
    parser.add_argument("--repeats", type=int, default=0, help="runs per mode (median)")
    args, started, device = start_benchmark(parser, argv)
    settings = settings_for(SETTINGS, args, device)
    runs = {"real": [], "synthetic": []}
    with tempfile.TemporaryDirectory() as folder:
        shards, _ = make_synth_shards(Path(folder) / "data", count=settings["videos"], frames=settings["video_frames"],
                                      width=settings["width"], height=settings["height"], val_fraction=0.15,
                                      target_bytes=512 * 1024)
        synthetic_loader = None
        for repeat in progress(range(settings["repeats"]), desc="train", unit="repeat"):
            for mode in runs:
                config = experiment(settings, shards, Path(folder) / f"run-{mode}-{repeat}", device, args.engine)
                if mode == "synthetic" and synthetic_loader is None:
                    synthetic_loader = FixedBatches.repeating(*one_batch_on_device(config, device))
                steady, whole_epoch, windows = run_once(config, synthetic_loader if mode == "synthetic" else None)
                runs[mode].append({"samples_per_s": round(steady, 3), "epoch_samples_per_s": round(whole_epoch, 3),
                                   "window_samples_per_s": [round(value, 3) for value in windows]})
    steps = settings["log_every"] * settings["windows"]
    modes = {}
    for mode, values in runs.items():
        samples_per_s = median([run["samples_per_s"] for run in values])
        modes[mode] = {"samples_per_s": samples_per_s, "steps_per_s": round(samples_per_s / settings["batch_size"], 3),
                       "frames_per_s": round(samples_per_s * settings["num_frames"], 2),
                       "epoch_samples_per_s": median([run["epoch_samples_per_s"] for run in values]), "runs": values}
    pairs = list(zip(runs["real"], runs["synthetic"]))
    ratio = round(median([real["samples_per_s"] / synthetic["samples_per_s"] for real, synthetic in pairs]), 3)
    whole_epoch = median([real["epoch_samples_per_s"] / synthetic["epoch_samples_per_s"] for real, synthetic in pairs])
    result = envelope(
        "train", device,
        {**settings, "engine": args.engine, "quick": args.quick, "steps_per_run": steps,
         "precision": "bf16" if device.type == "cuda" else "fp32", "decoder": "auto",
         "torch_threads": torch.get_num_threads(), "augment": True},
        started,
        modes=modes,
        ratios={"real_over_synthetic": ratio, "real_over_synthetic_whole_epoch": round(whole_epoch, 3),
                "median_real_over_median_synthetic": round(modes["real"]["samples_per_s"]
                                                           / modes["synthetic"]["samples_per_s"], 3)},
        goal={"real_over_synthetic_at_least": GOAL_REAL_OVER_SYNTHETIC, "met": ratio >= GOAL_REAL_OVER_SYNTHETIC},
        notes=["whole_epoch includes the first window (DataLoader worker start-up each epoch, first allocations).",
               "On a CPU-only machine the loader's workers and the model share the same cores, so the real loop "
               "is slower than the synthetic one by the CPU time decoding takes; on a GPU host they do not compete."])
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
