"""Where and in which precision a model runs: one definition for training, scoring, benchmarks and inference."""

import contextlib

import torch

from dfdtrain.core.errors import DfdError


def autocast(device, precision):
    """The forward pass's precision context, for training and scoring alike: bf16 autocast or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device(name, no_gpu=None):
    """The device a command's ``--device`` names, as a string: ``auto`` is ``cuda`` where torch sees a GPU, else
    ``cpu``; ``cuda`` (or ``cuda:N``) where torch sees none is DfdError(``no_gpu``: the command's own words, by
    default "--device NAME: CUDA is not available"); any other name is returned as it is."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DfdError(no_gpu or f"--device {name}: CUDA is not available")
    return name
