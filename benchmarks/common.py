"""What every benchmark shares: the machine it ran on, the arguments most benchmarks take, devices, timing, peak
FLOP/s (MFU), test data, the result envelope and JSON out, and an error in one line."""

import argparse
import datetime
import io
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np


# The 1-minute load average when the benchmark started (this module is imported first): results are built at
# the end, when the benchmark's own work has raised it.
LOAD_AT_START = round(os.getloadavg()[0], 2)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def module_version(module_name):
    try:
        module = __import__(module_name, fromlist=["__version__"])
    except Exception as error:  # not installed, or a broken install (torchcodec without FFmpeg libraries)
        return f"unavailable ({type(error).__name__})"
    return getattr(module, "__version__", "unknown")


def gpu_name():
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine():
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "load_average_1m_at_start": LOAD_AT_START,
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg_in_av": av.ffmpeg_version_info,
        "numpy": np.__version__,
        "torch": module_version("torch"),
        "nvidia_dali": module_version("nvidia.dali"),
        "torchcodec": module_version("torchcodec"),
        "timm": module_version("timm"),
        "deepspeed": deepspeed_version(),
    }


def deepspeed_version():
    """DeepSpeed's version from its package metadata: importing it would pick an accelerator and log."""
    from importlib import metadata

    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        return "unavailable (not installed)"


def created():
    """When a result was made (UTC, ISO 8601): RESULTS.md shows it beside each table."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# The real DFDC/FF++ clips: $DFDTRAIN_FIXTURES, else the shared folder beside the repository (as the tests find them).
DEFAULT_FIXTURES = os.environ.get("DFDTRAIN_FIXTURES", str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def add_fixtures_argument(parser, help="the real fixtures folder (default: $DFDTRAIN_FIXTURES, else "
                                       "../shared/fixtures)"):
    parser.add_argument("--fixtures", default=DEFAULT_FIXTURES, help=help)


def add_device_argument(parser):
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run: auto (cuda when a GPU is visible), cpu or cuda")


def benchmark_parser(doc, quick_help, fixtures=False):
    """The arguments most benchmarks start with: the description (the first line of the script's docstring
    ``doc``), --device, --fixtures when ``fixtures``, and --quick with ``quick_help``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_device_argument(parser)
    if fixtures:
        add_fixtures_argument(parser)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def parse_arguments(parser, argv):
    """--out, the last option of every benchmark that writes one result, then ``argv`` parsed."""
    parser.add_argument("--out", help="write the JSON result here too")
    return parser.parse_args(argv)


def start_benchmark(parser, argv):
    """A benchmark's start: ``argv`` parsed (with --out), the clock started (``time.time()``, for ``envelope``)
    and --device resolved; returns (args, started, device)."""
    args = parse_arguments(parser, argv)
    started = time.time()
    return args, started, resolve_device(args.device)


def settings_for(table, args, device):
    """A copy of this run's settings: ``table["quick"]`` with --quick, else the row of the device's type; a
    --repeats given replaces its repeats."""
    settings = dict(table["quick" if args.quick else device.type])
    if args.repeats:
        settings["repeats"] = args.repeats
    return settings


def error_line(error):
    """An exception as "Type: its first line" (a library's report can span pages): why a method is unavailable."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def resolve_device(name):
    """torch.device for --device; cuda without a GPU exits with one line (a benchmark never falls back silently)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmark: --device cuda, but torch sees no GPU")
    return torch.device(name)


def timed(function, device):
    """Seconds ``function()`` took. On a GPU: CUDA events around it, waiting for the queued work to finish
    (host timers would only measure how fast kernels are queued); on a CPU: the wall clock."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def median(values):
    return statistics.median(values)


def progress(iterable=None, **options):
    """A tqdm bar on stderr (stdout carries only the JSON)."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, leave=False, **options)


# ---------------------------------------------------------------------------------------------------
# Peak FLOP/s for MFU: dense (no 2:4 sparsity) tensor-core rates from NVIDIA's data sheets, in TFLOP/s.
# bf16: BF16 tensor cores with FP32 accumulation; tf32: TF32 tensor cores (what fp32 convolutions use while
# torch.backends.cudnn.allow_tf32 is on, torch's default); fp32: plain FP32 (CUDA cores). First match wins,
# so a specific name comes before the general one (H100 PCIe before H100); patterns match
# torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB".
PEAK_TFLOPS = [
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (r"H100.*NVL", "H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100|GH200", "H100 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H200.*NVL", "H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", "H200 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"A100", "A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", "L40S", {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 3090", "RTX 3090", {"bf16": 71.0, "tf32": 35.6, "fp32": 35.6}),
]


def math_mode(precision, device):
    """Which peak applies: bf16 for bf16 autocast; for fp32 on a GPU, tf32 when cuDNN may use it (default)."""
    if precision == "bf16":
        return "bf16"
    import torch

    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def peak_flops(device_name, mode):
    """(peak FLOP/s, table row name, None) or (None, None, reason) for a device name and math mode."""
    if not device_name:
        return None, None, "no GPU: there is no peak table for CPUs, so no MFU"
    for pattern, row, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peaks[mode] * 1e12, row, None
    return None, None, f"{device_name!r} is not in the peak FLOP/s table (benchmarks/common.py PEAK_TFLOPS)"


def mfu(flops_per_s, device_name, mode):
    """Model FLOPs utilisation: achieved FLOP/s / the device's dense peak for this math mode."""
    peak, row, reason = peak_flops(device_name, mode)
    return {"achieved_tflops": round(flops_per_s / 1e12, 4), "peak_tflops": peak / 1e12 if peak else None,
            "peak_row": row, "peak_mode": mode, "mfu": round(flops_per_s / peak, 4) if peak else None,
            "mfu_reason": reason}


# ---------------------------------------------------------------------------------------------------
# Test data made by dfdtrain itself: synth -> folder index -> shard (as tests/support.py does)


def first_frames(data, count):
    """The first ``count`` frames of a video, re-encoded as H.264 at the same size: a short real clip, for the
    quick (CI) variants of the benchmarks that shard real fixtures."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, mode="w", format="mp4") as target:
        stream = source.streams.video[0]
        encoded = target.add_stream("h264", rate=stream.average_rate or 25)
        encoded.width, encoded.height, encoded.pix_fmt = stream.width, stream.height, "yuv420p"
        for number, frame in enumerate(source.decode(stream)):
            if number == count:
                break
            for packet in encoded.encode(frame.reformat(format="yuv420p")):
                target.mux(packet)
        for packet in encoded.encode():
            target.mux(packet)
    return out.getvalue()


def make_synth_shards(root, count, frames, width, height, val_fraction=0.2, target_bytes=1 << 20, seed=0,
                      codec="h264", gop=12):
    """Generated clips, their manifest and shards under ``root``; returns (shard folder, manifest rows)."""
    from dfdtrain.data.ingest.manifest import build_manifest, write_manifest
    from dfdtrain.data.shards.writer import write_shards
    from dfdtrain.demo.synth import synthesize

    root = Path(root)
    synthesize(root / "data", count=count, frames=frames, width=width, height=height, codec=codec, seed=seed,
               gop=gop, progress=False)
    rows, summary = build_manifest("folder", root / "data", val_fraction=val_fraction, test_fraction=0,
                                   seed=seed, progress=False)
    write_manifest(root / "manifest.jsonl", rows, summary)
    write_shards(root / "manifest.jsonl", root / "shards", target_bytes=target_bytes, seed=seed, progress=False)
    return root / "shards", rows


# ---------------------------------------------------------------------------------------------------
# The result


def envelope(name, device, settings, started, **fields):
    """A benchmark's result in the one key order every script writes: benchmark, created, machine, device,
    settings, then ``fields`` (the measurements, in the order given), then seconds since ``started``
    (a ``time.time()``). ``device``: a torch.device or its type ("cpu", "cuda"); None leaves the key out (a
    result that ran nothing on a device, e.g. FLOP counting)."""
    result = {"benchmark": name, "created": created(), "machine": machine()}
    if device is not None:
        result["device"] = getattr(device, "type", device)
    result["settings"] = settings
    for key in ("benchmark", "created", "machine", "device", "settings", "seconds"):
        if key in fields:
            raise ValueError(f"envelope: {key!r} is the envelope's own key, not a measurement")
    result.update(fields)
    result["seconds"] = round(time.time() - started, 1)
    return result


def human_summary(result):
    """The result for people: its RESULTS.md section (table, ratios, notes) as plain lines."""
    from results_table import RENDERERS, render_generic

    title, renderer = RENDERERS.get(result.get("benchmark"), (result.get("benchmark", "benchmark"), render_generic))
    return "\n".join([f"== {title} ({result.get('device', 'no device')}, {result.get('seconds', '?')} s)",
                      *renderer(result)])


def emit(result, out=None):
    """Print the result as JSON on stdout and, for people, its summary on stderr; with ``out``, also save the
    JSON there (results/ files are committed). Returns 0: the exit status of a benchmark that wrote its result."""
    text = json.dumps(result, indent=2)
    print(text)
    print(human_summary(result), file=sys.stderr)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return 0
