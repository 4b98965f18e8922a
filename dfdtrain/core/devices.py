"""Where and in which precision a model runs: one definition for training, scoring, benchmarks and inference."""

import contextlib

import torch


def autocast(device, precision):
    """The forward pass's precision context, for training and scoring alike: bf16 autocast or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
