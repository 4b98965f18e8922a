"""Atomic writes (temp file in the same folder + rename), loads of torch files that run no code, JSON helpers."""

import contextlib
import json
import os
import pickle
import re
import tempfile

from dfdtrain.errors import DfdError

_UMASK = os.umask(0)
os.umask(_UMASK)

@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    A crash leaves either the old file or none, never a half-written one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_plain(path, map_location="cpu", allow=()):
    """``torch.load`` that runs nothing from the file: ``weights_only=True``, so only tensors, plain Python values
    and the value types in ``allow`` come back. Checkpoints and bundles come from other people, and unpickling
    anything else can run code; such a file is refused with one line naming what it holds."""
    import torch

    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = found.group(1) if found else " ".join(str(error).split())[:200]
        raise DfdError(f"{path}: refused to load: it holds {what}, not only tensors and plain values (unpickling "
                       "it could run code)") from None
    except (OSError, RuntimeError, ValueError, EOFError) as error:
        raise DfdError(f"{path}: unreadable ({' '.join(str(error).split())[:200]})") from None


def write_json(path, obj):
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_yaml_mapping(path, what):
    """A YAML file's mapping (empty file: {}); one line naming the file when it cannot be read, is not YAML or
    is not a mapping. ``what`` names the file's role in messages ("config", "suite")."""
    import yaml

    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as error:
        raise DfdError(f"{path}: cannot read {what} ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise DfdError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise DfdError(f"{path}: a {what} is a mapping, not {type(values).__name__}")
    return values


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def write_jsonl(path, rows):
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=False) + "\n")


def read_jsonl(path):
    """The rows of a JSON-lines file; a user's file that is not one is a one-line error naming it."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DfdError(f"{path}:{number}: not a JSON line ({error.msg})") from None
        except UnicodeDecodeError as error:
            raise DfdError(f"{path}: not a UTF-8 text file ({error.reason})") from None
    return rows
