"""Checkpoints, bundles and inputs from other people: whatever they hold, predict and export answer with one
line naming the file and what is wrong, before any large allocation, and never hang or run code."""

import contextlib
import json
import os
import pickle
import re
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from support import SMALL_CLIP

MEMORY_LIMIT = 8 * 2**30  # address space for each CLI run here: a check that fails shows as an error, not an OOM


def limited_cli(*args, timeout=120):
    """``python -m dfdtrain ARGS`` for real, its address space capped (a missed check cannot exhaust memory)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, resource.getrlimit(resource.RLIMIT_AS)[1]))

    return subprocess.run([sys.executable, "-m", "dfdtrain", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)


def one_error_line(result, command="predict"):
    """The CLI's single error line (exit 2, nothing else on stderr)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"dfdtrain {command}: error: "), lines[0]
    return lines[0]


@contextlib.contextmanager
def address_space_limit(extra):
    """This process may map at most ``extra`` more bytes meanwhile (a missed check: MemoryError, not an OOM)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny bundle (mobilenetv2_050 + mean head, 2 frames at 32 px), written as export_bundle writes one."""
    from safetensors.torch import save

    from dfdtrain.config import ClipSpec, ModelConfig, SamplerConfig
    from dfdtrain.models.bundle import BUNDLE_WEIGHTS, DetectorSettings, write_settings
    from dfdtrain.models.detector import build_detector_from_config

    folder = tmp_path_factory.mktemp("untrusted") / "bundle"
    folder.mkdir()
    model_config = ModelConfig(backbone="mobilenetv2_050", head="mean", head_options={"hidden": [8]})
    clip = ClipSpec(sampler=SamplerConfig("uniform", 2), crop="center", image_size=32, mean=(0.5, 0.5, 0.5),
                    std=(0.5, 0.5, 0.5))
    model = build_detector_from_config(model_config, clip)
    (folder / BUNDLE_WEIGHTS).write_bytes(save({name: value.contiguous() for name, value in
                                                model.state_dict().items()}))
    write_settings(DetectorSettings(name="tiny", model=model_config, clip=clip), folder)
    return folder


def variant(bundle, folder, weights=None, settings=None):
    """A copy of ``bundle`` in ``folder`` with its model.safetensors (bytes) and/or detector.json (text) replaced."""
    shutil.copytree(bundle, folder)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    if settings is not None:
        (folder / "detector.json").write_text(settings)
    return folder


def safetensors_parts(bundle):
    raw = (bundle / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def with_header(header, data):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def settings_with(bundle, change):
    values = json.loads((bundle / "detector.json").read_text())
    change(values)
    return json.dumps(values)


def checkpoint_folder(bundle, folder, name, write):
    """A training checkpoint folder: ``bundle``'s detector.json + ``write(path)`` making the weights file."""
    folder.mkdir()
    shutil.copyfile(bundle / "detector.json", folder / "detector.json")
    write(folder / name)
    return folder


# ------------------------------------------------------------------------------------------------------ inputs
def test_predict_refuses_fifos_and_devices_and_escapes_names(bundle, tmp_path):
    """Attack items 12 + file names: a FIFO (hung forever), /dev/zero (read until MemoryError) and a directory are
    each one error line; the other files are still scored; a newline in a name is escaped, not a line break."""
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    odd = tmp_path / "two\nlines\x1b[2J.mp4"
    shutil.copyfile(SMALL_CLIP, odd)
    inputs = [fifo, "/dev/zero", tmp_path, SMALL_CLIP, odd]
    result = limited_cli("predict", "--checkpoint", bundle, "--faces", "none", "--quiet", *inputs, timeout=90)
    assert result.returncode == 1, result.stderr[-3000:]
    # one first line per file (a scored video's details follow it, indented): no name breaks a line
    lines = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert lines[:3] == [f"ERROR {fifo}: not a regular file (a FIFO)",
                         "ERROR /dev/zero: not a regular file (a character device)",
                         f"ERROR {tmp_path}: not a regular file (a directory)"]
    assert len(lines) == 5 and lines[3].endswith(f"  {SMALL_CLIP}") and lines[3].split()[0] in ("REAL", "FAKE")
    assert lines[4].endswith(f"  {tmp_path}/two\\nlines\\x1b[2J.mp4") and lines[4].split()[0] in ("REAL", "FAKE")


def test_reading_a_file_stops_at_its_size_and_refuses_the_rest(tmp_path):
    from dfdtrain.core.fileio import FileRefused, read_regular_file

    (tmp_path / "a.bin").write_bytes(b"abc")
    assert read_regular_file(tmp_path / "a.bin") == b"abc"
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "a FIFO"), ("/dev/zero", "a character device"), (tmp_path, "a directory")):
        with pytest.raises(FileRefused, match=re.escape(f"{path}: not a regular file ({kind})")):
            read_regular_file(path)
    with pytest.raises(FileRefused, match="unreadable \\(No such file or directory\\)"):
        read_regular_file(tmp_path / "missing.mp4")


# ---------------------------------------------------------------------------------------- training checkpoints
def test_checkpoint_files_without_model_weights_are_one_line(bundle, tmp_path):
    """Attack item 13: mp_rank_00_model_states.pt holding a list, or a dict without ``module``: one line."""
    import torch

    from dfdtrain.core.errors import DfdError
    from dfdtrain.models.bundle import load_detector

    listed = checkpoint_folder(bundle, tmp_path / "list", "mp_rank_00_model_states.pt",
                               lambda path: torch.save([1, 2], path))
    line = one_error_line(limited_cli("predict", "--checkpoint", listed, "--faces", "none", SMALL_CLIP))
    assert line.endswith("mp_rank_00_model_states.pt: not a training checkpoint (it holds a list, not a dict with "
                         "'module')"), line

    cases = {  # (file, what it holds): the expected end of the message
        ("mp_rank_00_model_states.pt", "no module"): ({"step": 3}, "no 'module' weights; it holds 'step'"),
        ("mp_rank_00_model_states.pt", "module a list"): ({"module": [1]}, "'module' is a list, not a dict"),
        ("checkpoint.pt", "model of strings"): ({"model": {"w": "x"}}, "'model' holds str at 'w', not a tensor"),
        ("checkpoint.pt", "a tensor"): (torch.zeros(2), "it holds a Tensor, not a dict with 'model'"),
    }
    for number, ((name, _), (value, expected)) in enumerate(cases.items()):
        folder = checkpoint_folder(bundle, tmp_path / f"case{number}", name, lambda path: torch.save(value, path))
        with pytest.raises(DfdError) as caught:
            load_detector(folder)
        assert str(caught.value).startswith(f"{folder / name}: ") and expected in str(caught.value), caught.value


def test_a_raw_pickle_is_refused_plainly_and_never_run(bundle, tmp_path):
    """Attack item 19: a raw (non-zip) pickle is refused unread: the message says so plainly, no torch warning."""
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    folder = checkpoint_folder(bundle, tmp_path / "pickled", "mp_rank_00_model_states.pt",
                               lambda path: path.write_bytes(pickle.dumps({"module": RunsCode()}, protocol=4)))
    line = one_error_line(limited_cli("predict", "--checkpoint", folder, "--faces", "none", SMALL_CLIP))
    assert line.endswith("mp_rank_00_model_states.pt: refused to load: it is a raw pickle (not PyTorch's zip "
                         "format) that the weights-only loader cannot read (Unsupported operand 149); unpickling it "
                         "could run code, so it was not loaded"), line
    assert not marker.exists()

    import torch

    from dfdtrain.core.errors import DfdError
    from dfdtrain.core.fileio import load_plain

    for name, data, expected in (
            ("empty.pt", b"", "unreadable (an empty file, not a PyTorch checkpoint)"),
            ("text.pt", b"hello world", "unreadable (not a PyTorch checkpoint: KeyError"),
            ("protocol2.pt", pickle.dumps({"module": RunsCode()}, protocol=2),
             "refused to load: it is a raw pickle (not PyTorch's zip format) holding posix.system; unpickling it "
             "could run code, so it was not loaded")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DfdError, match=re.escape(f"{tmp_path / name}: {expected}")):
            load_plain(tmp_path / name)
    assert not marker.exists()
    # torch.save's legacy (non-zip) format of plain tensors still loads: the weights-only loader reads it safely
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_plain(tmp_path / "legacy.pt")["w"].tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------------ bundles
def test_a_bundle_naming_another_backbone_is_one_line(bundle, tmp_path):
    """Attack item 15 through the CLI: weights of mobilenetv2_050 under a detector.json naming mobilenetv2_100
    (227 lines of size mismatches before) are one line, from the safetensors header."""
    folder = variant(bundle, tmp_path / "other", settings=settings_with(
        bundle, lambda values: values["model"].update(backbone="mobilenetv2_100")))
    line = one_error_line(limited_cli("export", "--checkpoint", folder, "--out", tmp_path / "out"), "export")
    assert (f"{folder}/model.safetensors: the weights do not fit the model {folder}/detector.json describes "
            "(316 tensors in the model: 256 of another shape; e.g. backbone.conv_stem.weight is [16, 3, 3, 3] "
            "there, [32, 3, 3, 3] in the model)") in line, line


def test_tampered_bundles_are_one_line_naming_the_file_before_any_allocation(bundle, tmp_path):
    """Attack item 15: each tampering is a DfdError of one line naming the file and what is wrong."""
    from dfdtrain.core.errors import DfdError
    from dfdtrain.models.bundle import load_detector

    header, data = safetensors_parts(bundle)
    first = next(name for name in header if name != "__metadata__")
    square = next(name for name, entry in header.items()
                  if name != "__metadata__" and len(entry["shape"]) == 2 and entry["shape"][0] != entry["shape"][1])
    past_end = {**header, first: {**header[first], "data_offsets": [0, len(data) * 10]}}
    transposed = {**header, square: {**header[square], "shape": header[square]["shape"][::-1]}}
    weights_cases = {
        "garbage": (b"this is not a tensor file" * 40, "not a valid safetensors file (the header claims"),
        "empty": (b"", "not a valid safetensors file (0 bytes, shorter than the 8-byte header length)"),
        "huge header": (struct.pack("<Q", 2**60) + data, "the header claims 1152921504606846976 bytes"),
        "past the end": (with_header(past_end, data), f"tensor {first!r}: data offsets [0, {len(data) * 10}] lie "
                                                      f"outside the {len(data)} bytes of data"),
        "transposed": (with_header(transposed, data), f"1 of another shape; e.g. {square} is "
                                                      f"[{header[square]['shape'][1]}, {header[square]['shape'][0]}]"),
        "header not json": (struct.pack("<Q", 5) + b"[[[[{", "the header is not JSON"),
    }
    settings_cases = {
        "nested": ("[" * 100_000 + "]" * 100_000, "unreadable detector settings (nested too deeply)"),
        "hidden 2e9": (settings_with(bundle, lambda values: values["model"]["head_options"].update(
            hidden=[2_000_000_000])), "'model.head_options.hidden' must be at most 256 layer widths, each at most"),
        "hidden float": (settings_with(bundle, lambda values: values["model"]["head_options"].update(hidden=[2e9])),
                         "'model.head_options.hidden' must be a list of layer widths"),
        "frames": (settings_with(bundle, lambda values: values["clip"]["sampler"].update(num_frames=10**9)),
                   "clip.sampler.num_frames must be at most 1024"),
        "not an object": ("[1, 2]", "detector settings must be a JSON object"),
    }
    cases = {name: (variant(bundle, tmp_path / f"w{number}", weights=weights), "model.safetensors", expected)
             for number, (name, (weights, expected)) in enumerate(weights_cases.items())}
    cases.update({name: (variant(bundle, tmp_path / f"s{number}", settings=settings), "detector.json", expected)
                  for number, (name, (settings, expected)) in enumerate(settings_cases.items())})
    for name, (folder, culprit, expected) in cases.items():
        with address_space_limit(2 * 2**30), pytest.raises(DfdError) as caught:
            load_detector(folder)
        message = str(caught.value)
        assert message.startswith(f"{folder / culprit}: "), (name, message)
        assert expected in message and "\n" not in message, (name, message)
    # a head too big for its features, though each option is within bounds: counted before it is built
    huge = variant(bundle, tmp_path / "wide", settings=settings_with(bundle, lambda values: values["model"][
        "head_options"].update(hidden=[65536] * 4)))
    with address_space_limit(2 * 2**30), pytest.raises(DfdError, match="the mean head would hold [0-9,]+ parameters on "
                                                                        "1280 features \\(at most 1,073,741,824\\)"):
        load_detector(huge)


# ------------------------------------------------------------------------------------------- non-finite values
def test_detector_json_refuses_nan_and_infinite_numbers(bundle, tmp_path):
    """Attack item 8 (the detector.json side): a NaN threshold gave "REAL nan"; NaN, Infinity and numbers beyond a
    float's range are refused with one line naming the file."""
    text = (bundle / "detector.json").read_text()
    nan = variant(bundle, tmp_path / "nan", settings=text.replace('"threshold": 0.5', '"threshold": NaN'))
    line = one_error_line(limited_cli("predict", "--checkpoint", nan, "--faces", "none", SMALL_CLIP))
    assert line.endswith(f"{nan}/detector.json: unreadable detector settings (it holds NaN: NaN and infinite "
                         "numbers are refused)"), line

    from dfdtrain.core.errors import DfdError
    from dfdtrain.models.bundle import read_settings

    for number, (old, new, expected) in enumerate((
            ('"temperature": 1.0', '"temperature": Infinity', "it holds Infinity"),
            ('"temperature": 1.0', '"temperature": 1e999', "it holds 1e999, beyond a float's range"),
            ('"margin": 0.3333333333333333', '"margin": -Infinity', "it holds -Infinity"),
            ('"ela_scale": 10.0', '"ela_scale": NaN', "it holds NaN"))):
        path = tmp_path / f"detector{number}.json"
        path.write_text(text.replace(old, new))
        with pytest.raises(DfdError, match=re.escape(f"{path}: unreadable detector settings ({expected}")):
            read_settings(path)

    # NaN weights would make every score NaN just the same
    from safetensors.torch import load, save

    from dfdtrain.models.bundle import load_detector

    weights = load((bundle / "model.safetensors").read_bytes())
    weights["head.classifier.0.bias"][3] = float("nan")
    folder = variant(bundle, tmp_path / "nan_weights", weights=save(weights))
    with pytest.raises(DfdError, match=re.escape(f"{folder}/model.safetensors: weight head.classifier.0.bias holds "
                                                 "NaN or infinite values")):
        load_detector(folder)
