"""Checkpoints in a run directory: ``checkpoints/last`` and ``checkpoints/best``, each written atomically.

A checkpoint is written into ``checkpoints/.tmp-<tag>`` by every rank (the engine's model/optimizer/
scheduler files, plus one ``rng-rank<r>.pt`` per rank, and the trainer's ``detector.json``), then rank 0 swaps
it into place with renames. A crash at any moment leaves either the previous complete checkpoint or the new
one (or, between the two renames, ``.old-<tag>``, which ``find_checkpoint`` falls back to).
``checkpoints/latest`` names the last tag, as DeepSpeed's own tools expect.
"""

import os
import random
import shutil

import numpy as np
import torch

from dfdtrain.engine.distributed import barrier
from dfdtrain.fileio import atomic_open, load_plain, write_json


def rng_state():
    """This process's random generators as tensors and plain values (numpy's key array as a tensor), so the
    file loads with ``weights_only=True``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, run_dir, tag, state, context, json_files=None):
    """Write checkpoint ``tag`` (e.g. last, best) holding the engine's states, ``state`` (the loop's) and, from
    rank 0, ``json_files`` ({file name: JSON-ready value}, e.g. the detector settings)."""
    folder = os.path.join(run_dir, "checkpoints")
    temporary = os.path.join(folder, f".tmp-{tag}")
    if context.is_main:
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
    barrier()
    engine.save(temporary, state)
    if context.is_main:
        for name, value in (json_files or {}).items():
            write_json(os.path.join(temporary, name), value)
    with atomic_open(os.path.join(temporary, f"rng-rank{context.rank}.pt"), "wb") as handle:
        torch.save(rng_state(), handle)
    barrier()
    if context.is_main:
        final, old = os.path.join(folder, tag), os.path.join(folder, f".old-{tag}")
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
        with atomic_open(os.path.join(folder, "latest"), "w") as handle:
            handle.write("last")
    barrier()
    return os.path.join(folder, tag)


def find_checkpoint(run_dir, tag="last"):
    """The complete checkpoint folder for ``tag``, or None."""
    folder = os.path.join(run_dir, "checkpoints")
    for candidate in (tag, f".old-{tag}"):  # .old-<tag>: a crash between the two renames of a save
        path = os.path.join(folder, candidate)
        if os.path.isdir(path) and any(name.startswith("rng-rank") for name in os.listdir(path)):
            return path
    return None


def load_checkpoint(engine, path, context):
    """Restore the engine's states and this rank's RNG; returns the loop's state."""
    state = engine.load(path)
    rng_path = os.path.join(path, f"rng-rank{context.rank}.pt")
    if os.path.exists(rng_path):
        set_rng_state(load_plain(rng_path))
    return state
