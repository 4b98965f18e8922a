"""Atomic writes (temp file in the same folder + rename), loads of torch files that run no code, JSON helpers."""

import contextlib
import json
import math
import os
import pickle
import re
import stat
import tempfile
import warnings
from pathlib import Path

from dfdtrain.core.errors import BadVideo, DfdError, one_line

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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not error.filename:  # a write to an open file names none: say which
            error.filename = path
        raise


_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_open's mkstemp names: .NAME.<8 random characters>.tmp


def remove_stale_temporaries(folder):
    """Remove the temp files ``atomic_open`` left in ``folder`` when its writer was killed mid-write (SIGTERM and
    SIGKILL run no cleanup); call it only while holding the folder's lock. Returns the names removed."""
    removed = []
    for entry in os.scandir(folder) if os.path.isdir(folder) else ():
        if entry.is_file(follow_symlinks=False) and _TEMPORARY.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            removed.append(entry.name)
    return sorted(removed)


def check_output_folder(path, what="--out"):
    """``path`` as a folder to write into: refused with one line when it, or a folder above it, is an existing
    file (``mkdir`` would raise a traceback after the work was done). ``what`` names it in the message."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                where = "is" if folder == path else f"is inside {folder}, which is"
                raise DfdError(f"{what} {path} {where} an existing file, not a folder: name a folder to write into")
            break
    return path


def load_plain(path, map_location="cpu", allow=()):
    """``torch.load`` that runs nothing from the file: ``weights_only=True``, so only tensors, plain Python values
    and the value types in ``allow`` come back. Checkpoints and bundles come from other people, and unpickling
    anything else can run code; such a file is refused with one line naming what it holds (and, for a raw pickle
    rather than PyTorch's zip format, saying so). Only a regular file is opened (never a FIFO or a device)."""
    import torch

    with open_regular_file(path) as handle:
        magic = handle.read(4)
        if not magic:
            raise DfdError(f"{path}: unreadable (an empty file, not a PyTorch checkpoint)")
        handle.seek(0)
        try:
            with torch.serialization.safe_globals(list(allow)), warnings.catch_warnings():
                # "Detected pickle protocol 4 in the checkpoint...": torch's notice, not the file's problem
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return torch.load(handle, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            text = one_line(error)
            found = re.search(r"GLOBAL (\S+)", text)
            reason = re.search(r"WeightsUnpickler error: (.*?)(?: Check the | Please file an issue|$)", text)
            reason = one_line(reason.group(1) if reason else text, 160)
            if magic != ZIP_MAGIC:  # pickle.dump, or torch.save's legacy format
                what = f"holding {found.group(1)}" if found else f"that the weights-only loader cannot read ({reason})"
                raise DfdError(f"{path}: refused to load: it is a raw pickle (not PyTorch's zip format) {what}; "
                               "unpickling it could run code, so it was not loaded") from None
            what = found.group(1) if found else f"something the weights-only loader does not accept ({reason})"
            raise DfdError(f"{path}: refused to load: it holds {what}, not only tensors and plain values "
                           "(unpickling it could run code)") from None
        except Exception as error:  # whatever the bytes make torch's reader raise: one line, never a traceback
            detail = one_line(error, 200)
            if not isinstance(error, (OSError, RuntimeError, ValueError, EOFError)):
                detail = f"not a PyTorch checkpoint: {type(error).__name__}: {detail}"
            raise DfdError(f"{path}: unreadable ({detail})") from None


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive


class FileRefused(BadVideo):
    """A file that was not read (reason: unreadable, not a regular file): for a video, the same skip or error entry
    as any bad video."""


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


@contextlib.contextmanager
def open_regular_file(path):
    """A binary handle on ``path`` if it is a regular file (after symlinks), else ``FileRefused``.

    The file is opened without blocking (opening a FIFO with no writer would wait forever) and checked on the
    open descriptor, so a name swapped between a check and the open cannot slip a FIFO or device past it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise FileRefused(path, "unreadable", error.strerror or str(error)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            raise FileRefused(path, "not a regular file", kind)
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_regular_file(path):
    """The bytes of the regular file ``path``, at most its size when opened (a file growing meanwhile is not
    followed); ``FileRefused`` for a FIFO, device, directory or socket, or a file that cannot be opened."""
    with open_regular_file(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            return handle.read(size)
        except OSError as error:
            raise FileRefused(path, "unreadable", error.strerror or str(error)) from None


def _refuse_constant(token):
    raise ValueError(f"it holds {token}: NaN and infinite numbers are refused")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"it holds {text[:40]}, beyond a float's range: infinite numbers are refused")
    return value


def loads_untrusted_json(text):
    """``json.loads`` for files from other people: NaN / Infinity tokens and numbers overflowing a float are
    refused, and so is nesting deeper than Python's parser goes (ValueError with the reason, never RecursionError)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_SAFETENSORS_HEADER = 100 * 2**20  # safetensors' own limit


def read_safetensors_header(path):
    """({tensor name: (dtype, shape)}, file size) from a ``.safetensors`` file's header, checked against the file
    itself (header length within the file, known dtypes, each tensor's bytes = its shape x dtype size and inside
    the data, the tensors filling the data) without reading any tensor: a file that fails is one DfdError line
    naming it and the problem."""
    def bad(problem):
        return DfdError(f"{path}: not a valid safetensors file ({problem})")

    with open_regular_file(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(handle.read(8), "little")
        if length > size - 8 or length > MAX_SAFETENSORS_HEADER:
            raise bad(f"the header claims {length} bytes, the file holds {size - 8} after the length")
        text = handle.read(length)
    try:
        header = loads_untrusted_json(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise bad(f"the header is not JSON: {one_line(error, 160)}") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size = size - 8 - length
    tensors, covered = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise bad(f"tensor {name!r}: an entry needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= 16
                and all(type(dim) is int and 0 <= dim < 2**40 for dim in shape)):
            raise bad(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(end) is int for end in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise bad(f"tensor {name!r}: data offsets {offsets!r} lie outside the {data_size} bytes of data")
        if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
            raise bad(f"tensor {name!r}: shape {shape} of {dtype} needs {math.prod(shape) * SAFETENSORS_DTYPES[dtype]}"
                      f" bytes, its offsets span {offsets[1] - offsets[0]}")
        tensors[name] = (dtype, tuple(shape))
        covered += offsets[1] - offsets[0]
    if covered != data_size:  # as safetensors itself requires: the tensors fill the data, nothing else is there
        raise bad(f"its tensors span {covered} bytes, the file holds {data_size} bytes of data")
    return tensors, size


def write_json(path, obj, default=None):
    """``obj`` as indented JSON, atomically; ``default``: what json.dump calls for an object it cannot write (a
    value read only as the file is written)."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=default)
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
    except UnicodeDecodeError as error:  # a binary file given as a config
        raise DfdError(f"{path}: not a {what} file: not UTF-8 text (byte {error.start}); a {what} is YAML") from None
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
