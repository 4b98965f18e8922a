"""What every benchmark shares: the machine it ran on, and JSON out (stdout and optionally a file)."""

import json
import os
import platform
from pathlib import Path

import av
import numpy as np

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
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg_in_av": av.ffmpeg_version_info,
        "numpy": np.__version__,
        "torch": module_version("torch"),
        "nvidia_dali": module_version("nvidia.dali"),
        "torchcodec": module_version("torchcodec"),
    }



def emit(result, out=None):
    """Print the result as JSON; with ``out``, also save it there (results/ files are committed)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
