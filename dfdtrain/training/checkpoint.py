"""Checkpoints in a run directory: ``checkpoints/last`` and ``checkpoints/best``, each written atomically.

A checkpoint is written into ``checkpoints/.tmp-<tag>`` by every rank (the engine's model/optimizer/
scheduler files, plus one ``rng-rank<r>.pt`` per rank, and the trainer's ``detector.json``), then rank 0 swaps
it into place with renames. A crash at any moment leaves either the previous complete checkpoint or the new
one (or, between the two renames, ``.old-<tag>``, which ``find_checkpoint`` falls back to).
``checkpoints/latest`` names the last tag, as DeepSpeed's own tools expect; it is written only after the rename.
The next run clears what a crash left (``clean_checkpoints``) before it resumes.
"""

import errno
import os
import random
import shutil

import numpy as np
import torch

from dfdtrain.data.storage import megabytes, no_space_line
from dfdtrain.core.distributed import barrier
from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.core.fileio import atomic_open, load_plain, write_json
from dfdtrain.models.bundle import SETTINGS_FILE, read_settings


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


def save_checkpoint(engine, run_dir, tag, state, context, json_files=None, trained_only=False):
    """Write checkpoint ``tag`` (e.g. last, best) holding the engine's states, ``state`` (the loop's) and, from
    rank 0, ``json_files`` ({file name: JSON-ready value}, e.g. the detector settings); ``trained_only``: of the
    weights only the trained tensors (a frozen-base run, ``Engine.save``). A full disk is one line
    (``NoSpace``) naming the folder, the space the checkpoint needs and the space free; the previous checkpoint
    ``tag`` stays as it was."""
    folder = os.path.join(run_dir, "checkpoints")
    temporary = os.path.join(folder, f".tmp-{tag}")
    try:
        if context.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
            os.makedirs(temporary)
        barrier()
        engine.save(temporary, state, trained_only=trained_only)
        if context.is_main:
            for name, value in (json_files or {}).items():
                write_json(os.path.join(temporary, name), value)
        with atomic_open(os.path.join(temporary, f"rng-rank{context.rank}.pt"), "wb") as handle:
            torch.save(rng_state(), handle)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError("unexpected pos")
        raise _no_space(error, run_dir, tag) or error
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


class NoSpace(DfdError):
    """A checkpoint that did not fit on its file system."""


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _disk_full(error, folder):
    """Whether ``error`` came from a full disk: ENOSPC/EDQUOT on it or on an error it was raised while handling
    (torch.save's RuntimeError("unexpected pos") follows its OSError), or hardly any room left in ``folder``."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return shutil.disk_usage(folder).free < 2**22


def _no_space(error, run_dir, tag):
    """``NoSpace`` when ``error``, raised while writing checkpoint ``tag``, came from a full file system (else
    None); the partial checkpoint is removed first, so the space it took is free again."""
    folder = os.path.join(run_dir, "checkpoints")
    temporary = os.path.join(folder, f".tmp-{tag}")
    if not _disk_full(error, folder):
        return None
    written = folder_bytes(temporary)
    shutil.rmtree(temporary, ignore_errors=True)
    previous = next((folder_bytes(path) for path in (find_checkpoint(run_dir, "last"), find_checkpoint(run_dir, "best"))
                     if path), 0)
    needed = f"about {megabytes(previous)} MB" if previous >= written else f"more than {megabytes(written)} MB"
    return NoSpace(no_space_line(folder, error, f"checkpoint {tag!r} needs {needed}")
                   + "; free some space and run again: it resumes from checkpoints/last")


def copy_checkpoint(run_dir, source, tag):
    """Copy the complete checkpoint ``source`` to ``tag`` (rank 0), atomically like a save."""
    folder = os.path.join(run_dir, "checkpoints")
    temporary = os.path.join(folder, f".tmp-{tag}")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(os.path.join(folder, source), temporary)
    shutil.rmtree(os.path.join(folder, tag), ignore_errors=True)
    os.replace(temporary, os.path.join(folder, tag))


def _complete(path):
    """A checkpoint folder every rank finished (each writes its rng file last)."""
    return os.path.isdir(path) and any(name.startswith("rng-rank") for name in os.listdir(path))


def find_checkpoint(run_dir, tag="last"):
    """The complete checkpoint folder for ``tag``, or None."""
    folder = os.path.join(run_dir, "checkpoints")
    for candidate in (tag, f".old-{tag}"):  # .old-<tag>: a crash between the two renames of a save
        path = os.path.join(folder, candidate)
        if _complete(path):
            return path
    return None


def clean_checkpoints(run_dir):
    """Clear what a crashed save left in ``run_dir/checkpoints`` (rank 0, under the run's lock, before resuming):
    ``.tmp-<tag>`` folders go; ``.old-<tag>`` is renamed back to ``<tag>`` when that is missing (what
    ``find_checkpoint`` would load) and goes otherwise; a ``latest`` naming a missing folder is rewritten.
    Returns what was done, as short phrases (empty when there was nothing to clean)."""
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    done = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {name}")
        elif name.startswith(".old-"):
            final = os.path.join(folder, name[len(".old-"):])
            if _complete(final) or not _complete(path):
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {name}")
            else:
                shutil.rmtree(final, ignore_errors=True)  # an incomplete <tag>: find_checkpoint skipped it too
                os.replace(path, final)
                done.append(f"restored {os.path.basename(final)} from {name}")
    latest = os.path.join(folder, "latest")
    if os.path.exists(latest):
        with open(latest) as handle:
            named = handle.read().strip()
        if not named or not os.path.isdir(os.path.join(folder, named)):
            tag = next((tag for tag in ("last", "best") if os.path.isdir(os.path.join(folder, tag))), None)
            if tag is None:
                os.remove(latest)
                done.append(f"removed latest (it named {named!r})")
            else:
                with atomic_open(latest, "w") as handle:
                    handle.write(tag)
                done.append(f"latest named {named!r}, now {tag!r}")
    return done


def load_checkpoint(engine, path, context, base=None):
    """Restore the engine's states and this rank's RNG; returns the loop's state. A checkpoint whose files load
    (weights only) but do not hold what this run saves (a list, missing keys, weights of another model) is one
    line naming it: it may come from someone else, or from another version or config. ``base``: this run's
    BaseIdentity when it stores only the trained tensors; the checkpoint must have been trained on that base."""
    if base is not None:
        _check_same_base(path, base)
    try:
        state = engine.load(path, trained_only=base is not None)
        rng_path = os.path.join(path, f"rng-rank{context.rank}.pt")
        if os.path.exists(rng_path):
            set_rng_state(load_plain(rng_path))
    except DfdError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        # load_state_dict lists every mismatch on its own line: the first one says enough
        detail = one_line(" ".join(str(error).split("\n")[:2]), 300)
        raise DfdError(f"{path}: cannot resume from this checkpoint, it does not hold what this run saves "
                       f"({type(error).__name__}: {detail})") from None
    if not isinstance(state, dict):
        raise DfdError(f"{path}: cannot resume from this checkpoint (its loop state is a {type(state).__name__})")
    return state


def _check_same_base(path, base):
    """One line unless checkpoint ``path`` (its detector.json) was trained on ``base``: resuming on another base
    would train on from tensors the rest of the checkpoint does not match."""
    settings = read_settings(os.path.join(path, SETTINGS_FILE))
    if settings.base.sha256 != base.sha256:
        recorded = (f"the base {settings.base.describe()} (sha256 {settings.base.sha256[:16]})"
                    if settings.base.needed else "every tensor (a finetune.method full run)")
        raise DfdError(f"{path}: cannot resume: it holds {recorded}, but this run's base is {base.describe()} "
                       f"(sha256 {base.sha256[:16]}); use the run's model.pretrained_file and seed")
