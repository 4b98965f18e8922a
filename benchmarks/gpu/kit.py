"""The GPU acceptance kit: one prepared run that proves dfdtrain's GPU paths on a lent GPU machine in under 9
minutes of device time, its CPU dry run, and the preparation of the files it carries (README.md beside this).

    python benchmarks/gpu/kit.py OUT_DIR              on the GPU machine (run.sh): receive, install, every step
    python benchmarks/gpu/kit.py --receive            on the GPU machine, every call but the last: keep its load
    python benchmarks/gpu/kit.py --dry-run OUT_DIR    on a CPU: check the wheel list, plan, each step's CPU variant
    python benchmarks/gpu/kit.py --prepare            here: download the pinned wheels, split and pack them

Only the standard library: on a fresh GPU machine this runs before anything is installed.
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = Path(__file__).resolve().parent
WHEEL_LIST = KIT / "wheels.txt"
CONSTRAINTS = REPO / "constraints.txt"
CARRY = REPO / ".gpu-carry"  # ignored by git: what the device calls carry
CARRY_NAME = ".gpu-carry"
# On the GPU machine: the parts of every call, kept while it stays warm (outside the repo copy, which each call
# lays anew), and the install target.
PARTS = Path(os.environ.get("GPU_KIT_PARTS", "/root/parts"))
SITE = Path(os.environ.get("GPU_KIT_SITE", "/tmp/site"))

MIB = 1 << 20
CARRY_LIMIT = 64 * MIB  # the device tool's limit per call: the tree that travels plus every carried path
PART_BYTES = 60 * MIB  # `split -b 60M`: a wheel larger than this travels in parts of this size
TREE_MARGIN = 1 * MIB  # room for files that appear in the tree between planning and the calls
TOTAL_BUDGET_S = 9 * 60  # the whole GPU run, install included
INSTALL_BUDGET_S = 45
DRY_RUN_STEP_BUDGET_S = 300  # a CPU variant's limit in the dry run: only against hangs, nothing is timed there
KILL_GRACE_S = 10  # `timeout -k`: a step that ignores SIGTERM is killed this much later
MIN_STEP_S = 15  # a step with less time left than this is not started
RECEIVE_TIMEOUT_S = 60
FINAL_TIMEOUT_S = 600  # the last call's timeout_s (the device tool's most): the 9-minute run, room for the tail

# The pip download line of the device README (/work/.library/device/README.md): cp312, these platforms.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
PIP_DOWNLOAD = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                "--implementation", "cp", *[flag for platform in PLATFORMS for flag in ("--platform", platform)]]
# Packages PyPI has only as an sdist: `pip wheel --no-deps` builds their wheel here (name -> why it is fine).
BUILT_HERE = {"deepspeed": "PyPI has only DeepSpeed's sdist; its wheel is pure Python with no prebuilt ops, and "
                           "ZeRO with a torch optimizer (what dfdtrain passes) needs none"}
# The real fixtures the GPU run reads (../shared/fixtures does not travel): shard_decode.py's videos, shard_faces.py's
# and tests/test_gpu.py's (a portrait DFDC clip; the FF++ 183/253 group with its fakes and the official splits).
FFPP_FAKES = [f"ffpp/manipulated_sequences/{method}/c40/videos/{pair}.mp4"
              for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures") for pair in ("183_253", "253_183")]
FIXTURES = ["dfdc/dfdc_train_part_0/brtujopkby.mp4", "dfdc/dfdc_train_part_0/metadata.json",
            "ffpp/original_sequences/youtube/c40/videos/183.mp4", "ffpp/original_sequences/youtube/c40/videos/253.mp4",
            *FFPP_FAKES, "labels/ffpp/train.json", "labels/ffpp/val.json", "labels/ffpp/test.json"]


class KitError(Exception):
    """One line for the user: the file or thing at fault and why."""


# ---------------------------------------------------------------------------------------------------
# The wheel list


@dataclasses.dataclass
class Wheel:
    pin: str  # NAME==VERSION as written
    name: str  # normalised (PEP 503)
    version: str
    file: str  # the wheel file pip saves
    bytes: int
    line: int  # in the wheel list


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
WHEEL_FILE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<python>[^-]+)-(?P<abi>[^-]+)-"
                        r"(?P<platform>[^-]+)\.whl$")


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def supported_tags():
    """The (python, abi, platform) tags pip accepts for CPython 3.12 on the download line's platforms."""
    tags = set()
    for platform in PLATFORMS:
        tags |= {("cp312", "cp312", platform), ("cp312", "abi3", platform), ("cp312", "none", platform)}
        tags |= {(f"cp3{minor}", "abi3", platform) for minor in range(2, 12)}
    for platform in (*PLATFORMS, "any"):
        tags |= {(f"py3{minor}", "none", platform) for minor in range(0, 13)} | {("py3", "none", platform)}
    tags.add(("cp312", "none", "any"))
    return tags


SUPPORTED_TAGS = supported_tags()


def wheel_file_problem(file, name, version):
    """Why ``file`` is not a wheel of NAME==VERSION that installs on cp312 manylinux x86_64 (None: it is)."""
    match = WHEEL_FILE.match(file)
    if not match:
        return f"{file} is not a wheel file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)"
    if normalise(match["name"]) != name or match["version"] != version:
        return f"{file} is {match['name']} {match['version']}, not the pinned {name} {version}"
    tags = {(python, abi, platform) for python in match["python"].split(".") for abi in match["abi"].split(".")
            for platform in match["platform"].split(".")}
    if not tags & SUPPORTED_TAGS:
        return (f"{file} does not install on CPython 3.12 manylinux x86_64 (tags {match['python']}-{match['abi']}-"
                f"{match['platform']}; wanted cp312, abi3 or py3 on {', '.join(PLATFORMS)} or any)")
    return None


def read_constraints(path):
    """{normalised name: (version, line number)} of the NAME==VERSION lines of constraints.txt."""
    pins = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise KitError(f"{path}: cannot read it ({error.strerror})") from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        match = PIN.match(text)
        if match:
            pins[normalise(match[1])] = (match[2], number)
    return pins


def read_wheel_list(path=WHEEL_LIST, constraints=CONSTRAINTS):
    """The wheels of the list, each pinned, installable on cp312 manylinux x86_64 and consistent with
    constraints.txt; a list that is not is refused with one line (the first problem, and how many more)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise KitError(f"{path}: cannot read the wheel list ({error.strerror})") from None
    pinned = read_constraints(constraints)
    wheels, problems, seen = [], [], {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{display(path)}:{number}"
        fields = text.split()
        match = PIN.match(fields[0])
        if not match:
            problems.append(f"{where}: {fields[0]} is not pinned (NAME==VERSION: the device gets exactly this version)")
            continue
        if len(fields) != 3 or not fields[2].isdigit() or int(fields[2]) <= 0:
            problems.append(f"{where}: expected 'NAME==VERSION WHEEL-FILE BYTES', got {text!r}")
            continue
        name, version = normalise(match[1]), match[2]
        problem = wheel_file_problem(fields[1], name, version)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if name in seen:
            problems.append(f"{where}: {name} is listed twice (also line {seen[name]}): two versions stop the install")
            continue
        seen[name] = number
        if name in pinned and pinned[name][0] != version:
            problems.append(f"{where}: {fields[0]} differs from {display(constraints)}:{pinned[name][1]} "
                            f"({name}=={pinned[name][0]})")
            continue
        wheels.append(Wheel(fields[0], name, version, fields[1], int(fields[2]), number))
    if not wheels and not problems:
        problems.append(f"{display(path)}: lists no wheel")
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise KitError(problems[0] + more)
    return wheels


def display(path):
    """A path as the user would type it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------
# What travels: the tree, the fixtures, and the plan of calls


def tree_files(repo=REPO):
    """The files every device call sends: tracked and untracked-not-ignored ones (git), plus shared/ if any."""
    listing = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True)
    if listing.returncode != 0:
        raise KitError(f"{repo}: git ls-files failed ({listing.stderr.decode(errors='replace').strip()}): the kit "
                       "measures the tree that travels with git")
    names = [name for name in listing.stdout.decode().split("\0") if name]
    files = [Path(repo) / name for name in names]
    shared = Path(repo) / "shared"
    if shared.is_dir():
        files += [path for path in shared.rglob("*") if path.is_file()]
    return [path for path in files if path.is_file()]


def check_tree(repo=REPO):
    """Bytes of the tree that travels; no wheel may be in it, and the carry folder must be ignored."""
    files = tree_files(repo)
    wheels = [path for path in files if path.name.endswith(".whl")]
    if wheels:
        raise KitError(f"{display(wheels[0])}: a wheel in the tree that travels with every call (tracked or not "
                       f"ignored): wheels belong in {CARRY_NAME}/ (bash benchmarks/gpu/prepare.sh)")
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", f"{CARRY_NAME}/load1/x"])
    if ignored.returncode != 0:
        raise KitError(f".gitignore: {CARRY_NAME}/ is not ignored, so the carried wheels would travel with every call "
                       f"and land in git: add '{CARRY_NAME}/' to .gitignore")
    return sum(path.stat().st_size for path in files)


def fixtures_root():
    """The real fixtures: $DFDTRAIN_FIXTURES, else ../shared/fixtures beside the repository."""
    return Path(os.environ.get("DFDTRAIN_FIXTURES", REPO.parent / "shared" / "fixtures"))


def fixture_bytes(root):
    missing = [name for name in FIXTURES if not (Path(root) / name).is_file()]
    if missing:
        raise KitError(f"{Path(root) / missing[0]}: fixture not found (set DFDTRAIN_FIXTURES to the real fixtures)")
    return sum((Path(root) / name).stat().st_size for name in FIXTURES)


def pieces_of(file, size, part_bytes):
    """[(piece name, bytes, offset in the file)]: the whole file, or the parts `split -b` would cut,
    NAME.part00, NAME.part01, ... (`cat NAME.part* > NAME` puts it back together)."""
    if size <= part_bytes:
        return [(file, size, 0)]
    count = math.ceil(size / part_bytes)
    return [(f"{file}.part{number:02d}", min(part_bytes, size - number * part_bytes), number * part_bytes)
            for number in range(count)]


def carry_plan(sizes, tree, fixtures, part_bytes=PART_BYTES, limit=CARRY_LIMIT, margin=TREE_MARGIN):
    """The device calls: [{"call", "carry", "command", "timeout_s", "bytes", "pieces": [[name, bytes, offset]]}].

    ``sizes``: {wheel file: bytes}. Each call sends the tree plus its load; pieces go first fit, largest first;
    the last call (the one that runs the kit) carries the load with the most room left and the fixtures."""
    room = limit - tree - margin
    if room < min(part_bytes, max(sizes.values())) or room < fixtures:
        raise KitError(f"the tree that travels is {tree / MIB:.1f} MiB: too little room is left in a "
                       f"{limit / MIB:.0f} MiB call for the carried parts and fixtures")
    pieces = [piece for file, size in sizes.items() for piece in pieces_of(file, size, min(part_bytes, room))]
    loads = []
    for piece in sorted(pieces, key=lambda piece: (-piece[1], piece[0])):
        for load in loads:
            if sum(other[1] for other in load) + piece[1] <= room:
                load.append(piece)
                break
        else:
            loads.append([piece])
    loads.sort(key=lambda load: -sum(piece[1] for piece in load))
    if sum(piece[1] for piece in loads[-1]) + fixtures > room:
        loads.append([])  # the fixtures fit beside no load: they travel in a call of their own, the last
    calls = []
    for number, load in enumerate(loads, 1):
        last = number == len(loads)
        carry = [f"{CARRY_NAME}/load{number}"] + ([f"{CARRY_NAME}/fixtures"] if last else [])
        load_bytes = sum(piece[1] for piece in load) + (fixtures if last else 0)
        calls.append({"call": number, "carry": carry,
                      "command": "PYTHONUNBUFFERED=1 bash benchmarks/gpu/run.sh $OUT" if last
                      else "bash benchmarks/gpu/run.sh --receive",
                      "timeout_s": FINAL_TIMEOUT_S if last else RECEIVE_TIMEOUT_S,
                      "bytes": tree + load_bytes, "pieces": [list(piece) for piece in load]})
    return calls


# ---------------------------------------------------------------------------------------------------
# Preparing the carry folder (here) and receiving it (on the GPU machine)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 * MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def download(wheels, folder):
    """Fetch the listed wheels into ``folder`` (pip download line of the device README; BUILT_HERE: pip wheel)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [wheel for wheel in wheels if not (folder / wheel.file).is_file()]
    fetched = [wheel.pin for wheel in wanted if wheel.name not in BUILT_HERE]
    if fetched:
        completed = subprocess.run([sys.executable, *PIP_DOWNLOAD, "-q", "-d", str(folder), *fetched])
        if completed.returncode != 0:
            raise KitError(f"pip download failed (exit {completed.returncode}) for {', '.join(fetched)}: see its "
                           "output above")
    for wheel in wanted:
        if wheel.name in BUILT_HERE:
            print(f"building {wheel.pin} here: {BUILT_HERE[wheel.name]}", flush=True)
            completed = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder),
                                        wheel.pin])
            if completed.returncode != 0:
                raise KitError(f"pip wheel {wheel.pin} failed (exit {completed.returncode}): see its output above")
    sizes = {}
    for wheel in wheels:
        path = folder / wheel.file
        if not path.is_file():
            raise KitError(f"{display(WHEEL_LIST)}:{wheel.line}: pip saved no {wheel.file} for {wheel.pin} (the "
                           f"index serves another file: put the one it saved in {display(folder)} on that line)")
        size = path.stat().st_size
        if size != wheel.bytes and wheel.name not in BUILT_HERE:
            raise KitError(f"{display(WHEEL_LIST)}:{wheel.line}: {wheel.file} is {size} bytes, the list says "
                           f"{wheel.bytes}: the index serves another file; check it and update the line")
        sizes[wheel.file] = size  # a wheel built here may differ by a few bytes from the listed build
    return sizes


def write_loads(calls, wheel_folder, carry, shas):
    """Write each call's load folder (whole wheels hard-linked, parts cut as `split -b` does) and, into every
    load, manifest.json: each wheel's bytes, sha256 and pieces, so that any call can tell what is missing."""
    for old in carry.glob("load*"):
        shutil.rmtree(old)
    wheels = {}
    for call in calls:
        for name, size, _ in call["pieces"]:
            wheels.setdefault(re.sub(r"\.part\d\d$", "", name), []).append([name, size])
    manifest = {"kit": "dfdtrain GPU acceptance kit", "created": now(),
                "wheels": [{"file": file, "bytes": sum(size for _, size in pieces), "sha256": shas[file],
                            "pieces": sorted(pieces)} for file, pieces in sorted(wheels.items())],
                "calls": [{**{key: call[key] for key in ("call", "carry", "command", "timeout_s", "bytes")},
                           "pieces": [name for name, _, _ in call["pieces"]]} for call in calls]}
    for call in calls:
        load = carry / f"load{call['call']}"
        load.mkdir(parents=True)
        for name, size, offset in call["pieces"]:
            file = re.sub(r"\.part\d\d$", "", name)
            if name == file:
                os.link(wheel_folder / file, load / name)  # no second copy of a whole wheel
            else:
                with open(wheel_folder / file, "rb") as source, open(load / name, "wb") as target:
                    source.seek(offset)
                    target.write(source.read(size))
        (load / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def receive(carry=CARRY, parts=PARTS):
    """Copy every load this call carried into ``parts``; returns (manifest, missing pieces, loads received)."""
    loads = sorted(path for path in Path(carry).glob("load*") if path.is_dir())
    parts = Path(parts)
    parts.mkdir(parents=True, exist_ok=True)
    for load in loads:
        for path in sorted(load.iterdir()):
            target = parts / path.name
            if not (target.is_file() and target.stat().st_size == path.stat().st_size and path.name != "manifest.json"):
                shutil.copyfile(path, target)
    if not (parts / "manifest.json").is_file():
        raise KitError(f"{parts}/manifest.json: no load has arrived (name {CARRY_NAME}/loadN in each call's carry, "
                       "after bash benchmarks/gpu/prepare.sh)")
    manifest = json.loads((parts / "manifest.json").read_text())
    missing = [name for wheel in manifest["wheels"] for name, size in wheel["pieces"]
               if not ((parts / name).is_file() and (parts / name).stat().st_size == size)]
    return manifest, missing, [load.name for load in loads]


def missing_text(manifest, missing):
    """Which calls' loads have not arrived, for one line."""
    calls = [call for call in manifest["calls"] if set(call["pieces"]) & set(missing)]
    loads = ", ".join(call["carry"][0] for call in calls)
    return f"{len(missing)} piece(s) of the calls {', '.join(str(call['call']) for call in calls)} ({loads})"


def reassemble(manifest, parts=PARTS):
    """`cat NAME.part* > NAME` for each split wheel, then every wheel's sha256 against the manifest."""
    folder = Path(parts) / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for wheel in manifest["wheels"]:
        target = folder / wheel["file"]
        if not (target.is_file() and target.stat().st_size == wheel["bytes"]):
            with open(target, "wb") as out:
                for name, _ in sorted(wheel["pieces"]):
                    with open(Path(parts) / name, "rb") as piece:
                        shutil.copyfileobj(piece, out, 8 * MIB)
        if sha256(target) != wheel["sha256"]:
            target.unlink()
            raise KitError(f"{target}: sha256 differs from the manifest (a piece was damaged or is from another "
                           "prepare): send its load again")
        paths.append(target)
    return paths


def calls_text(calls):
    """The device tool's calls, one per line, as they are to be made."""
    return [f"  call {call['call']}: run(command={call['command']!r}, carry={call['carry']}, "
            f"timeout_s={call['timeout_s']})   # {call['bytes'] / MIB:.1f} MiB with the tree" for call in calls]


def prepare(wheel_list=WHEEL_LIST, carry=CARRY):
    """Download the pinned wheels into the ignored carry folder, copy the fixtures, split and pack the loads."""
    wheels = read_wheel_list(wheel_list)
    tree = check_tree()
    source = fixtures_root()
    fixtures = fixture_bytes(source)
    wheel_folder = carry / "wheels"
    started = time.time()
    sizes = download(wheels, wheel_folder)
    print(f"downloaded {len(sizes)} wheels, {sum(sizes.values()) / MIB:.1f} MiB, in {time.time() - started:.0f} s "
          f"into {display(wheel_folder)}")
    shutil.rmtree(carry / "fixtures", ignore_errors=True)
    for name in FIXTURES:
        (carry / "fixtures" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, carry / "fixtures" / name)
    calls = carry_plan(sizes, tree, fixtures)
    shas = {file: sha256(wheel_folder / file) for file in sizes}
    write_loads(calls, wheel_folder, carry, shas)
    (carry / "calls.json").write_text(json.dumps(calls, indent=2) + "\n")
    shutil.rmtree(wheel_folder)  # the loads hold every byte once (whole wheels were hard-linked)
    for line in wheel_lines(wheels, sizes):
        print(line)
    print(f"packed into {len(calls)} device calls ({display(carry)}/load1..{len(calls)}, fixtures "
          f"{fixtures / MIB:.1f} MiB with the last); make them back to back (a machine stays warm ~30 s):")
    for line in calls_text(calls):
        print(line)
    return calls


def size_text(count):
    return f"{count / MIB:.1f} MiB" if count >= MIB else f"{count / 1024:.0f} KiB"


def wheel_lines(wheels, sizes):
    """One line per wheel: its size, and whether it travels whole or in how many parts."""
    lines = []
    for wheel in wheels:
        pieces = pieces_of(wheel.file, sizes[wheel.file], PART_BYTES)
        how = "whole" if len(pieces) == 1 else f"{len(pieces)} parts of at most {PART_BYTES // MIB} MiB (split -b 60M)"
        lines.append(f"  {wheel.pin:<34} {size_text(sizes[wheel.file]):>10}  {how}")
    return lines


# ---------------------------------------------------------------------------------------------------
# The steps


@dataclasses.dataclass
class Step:
    name: str
    budget_s: int  # its `timeout` on the GPU machine
    what: str
    output: str  # its result under OUT_DIR; {tag}: the GPU's name tag, or "quick" in the dry run
    gpu: list  # arguments after the Python executable on the GPU machine; {out}: the result's path
    cpu: list  # the CPU-sized variant the dry run runs


def gpu_test_files():
    """The test files holding GPU-marked tests (tests/test_gpu.py; any other that marks tests so)."""
    marker = "pytest.mark." + "gpu"  # spelt in two pieces: this file is no test file
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob("test_*.py")
                  if marker in path.read_text())


def steps():
    bench = ["-m", "dfdtrain", "bench"]
    tests = ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--junitxml={out}", *gpu_test_files()]
    return [
        Step("decode", 70, "DALI mixed (NVDEC) vs PyAV, 16 sampled frames, on shards of the real fixtures: original "
             "videos and face clips, ratio in one run", "decode_shards_{tag}.json",
             ["benchmarks/gpu/shard_decode.py", "--device", "cuda", "--out", "{out}"],
             ["benchmarks/gpu/shard_decode.py", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("faces", 45, "the face store (dfdtrain shard --store faces) of 16 copies of the 10-s 1080p DFDC clip with "
             "MTCNN on the GPU (one shared detector) vs on the CPU: videos/s, seconds per stage (goal <= 1 s per "
             "video on the GPU)", "shard_faces_{tag}.json",
             ["benchmarks/gpu/shard_faces.py", "--device", "cuda", "--out", "{out}"],
             ["benchmarks/gpu/shard_faces.py", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("model", 100, "bench model: bf16 + channels_last vs fp32/NCHW for EfficientNet-B7@380 and "
             "ResNet152V2@224 (timm resnetv2_152), MFU against the device's peak", "model_{tag}.json",
             [*bench, "model", "--device", "cuda", "--cases", "EfficientNetB7@380,ResNet152V2@224", "--repeats", "3",
              "--steps", "5", "--warmup", "3", "--out", "{out}"],
             [*bench, "model", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("train", 110, "bench train: the real loop with the DALI loader vs the same loop fed a batch already on "
             "the device (goal >= 0.95); its clips generated in parallel (train_step.py)", "train_{tag}.json",
             ["benchmarks/gpu/train_step.py", "--device", "cuda", "--repeats", "2", "--out", "{out}"],
             ["benchmarks/gpu/train_step.py", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("engine", 60, "bench engine: DeepSpeed ZeRO-1 (and 0, 2) vs DDP step time; world size 1 on one GPU",
             "engine_{tag}.json",
             [*bench, "engine", "--device", "cuda", "--nproc", "1", "--repeats", "3", "--steps", "5", "--warmup", "2",
              "--out", "{out}"],
             [*bench, "engine", "--quick", "--device", "cpu", "--nproc", "1", "--out", "{out}"]),
        Step("gpu_tests", 80, "pytest -m gpu: DALI mixed decode vs PyAV frames, predict/evaluate --device cuda, a "
             "bf16 training epoch (skipped, with the reason, without CUDA)", "gpu_tests_{tag}.xml", tests, tests),
    ]


def budget_s():
    return INSTALL_BUDGET_S + sum(step.budget_s for step in steps())


# ---------------------------------------------------------------------------------------------------
# Reading each step's result: the headline figures, and what makes the step fail


def summarise_decode(result, on_gpu, environment):
    stores, problems = result["stores"], []
    summary = {"videos": stores["original"]["videos"],
               "faces_speedup_over_original": result["ratios"]["faces_speedup_over_original"]}
    if "dali_gpu" in result["unavailable"]:
        summary["dali_gpu"] = result["unavailable"]["dali_gpu"]
        if on_gpu:
            problems.append(f"DALI mixed did not run: {result['unavailable']['dali_gpu']}")
    else:
        summary["dali_gpu_speedup_over_pyav"] = {store: stores[store]["dali_gpu_speedup_over_pyav"]
                                                 for store in ("original", "faces")}
        summary["dali_vs_pyav_mean_abs_max"] = {store: stores[store]["dali_vs_pyav_mean_abs_max"]
                                                for store in ("original", "faces")}
        summary["dali_vs_pyav_within_tolerance"] = all(stores[store]["dali_vs_pyav_within_tolerance"]
                                                       for store in ("original", "faces"))
    return summary, problems


def summarise_faces(result, on_gpu, environment):
    runs, problems = result["runs"], []
    summary = {"videos": result["settings"]["copies"], "workers": result["settings"]["workers"],
               **{key: {device: run[key] for device, run in runs.items()}
                  for key in ("wall_s", "videos_per_s", "wall_s_per_video", "stage_seconds", "skipped")},
               "cpu_over_gpu_wall": result["ratios"].get("cpu_over_gpu_wall"),
               "goal": result["goal"]["wall_s_per_dfdc_video_at_most"], "goal_met": result["goal"]["met"]}
    if "cuda" in result["unavailable"]:
        summary["cuda"] = result["unavailable"]["cuda"]
        if on_gpu:
            problems.append("the face store did not run with the detector on the GPU: "
                            f"{result['unavailable']['cuda']}")
    elif "shared_detector" in runs["cuda"]:
        summary["shared_detector"] = runs["cuda"]["shared_detector"]
    elif result["settings"]["workers"] > 1:  # the GPU path to prove: every worker's frames batched in one detector
        problems.append(f"{result['settings']['workers']} workers on the GPU, but no shared detector ran")
    return summary, problems


def summarise_model(result, on_gpu, environment):
    summary, problems = {}, []
    for case in result["cases"]:
        rows = {(row["precision"], row["memory_format"]): row for row in case["results"]}
        figures = {}
        for precision, memory_format in (("bf16", "channels_last"), ("fp32", "nchw")):
            row = rows[precision, memory_format]
            figures[f"{precision}_{memory_format}"] = {key: row[key] for key in (
                "frames_per_s", "achieved_tflops", "mfu", "peak_tflops", "peak_mode", "peak_row")}
            if on_gpu and row["mfu"] is None:
                problems.append(f"{case['case']}: no MFU ({row['mfu_reason']})")
        figures["bf16_channels_last_over_fp32_nchw"] = case["ratios"]["bf16_channels_last_over_fp32_nchw"]
        summary[case["case"]] = figures
    if on_gpu:
        missing = {"EfficientNetB7@380", "ResNet152V2@224"} - set(summary)
        if missing:
            problems.append(f"case(s) not measured: {', '.join(sorted(missing))}")
    return summary, problems


def summarise_train(result, on_gpu, environment):
    dali = bool(environment.get("dali_usable"))
    summary = {"real_over_synthetic": result["ratios"]["real_over_synthetic"],
               "goal": result["goal"]["real_over_synthetic_at_least"], "goal_met": result["goal"]["met"],
               "samples_per_s": {mode: values["samples_per_s"] for mode, values in result["modes"].items()},
               "real_loader": "DALI shard loader (decoder auto, DALI usable here)" if dali
               else "VideoLoader with PyAV workers (decoder auto, DALI not usable here)"}
    problems = [] if dali or not on_gpu else ["the real loop did not use DALI (dali_usable() is False here)"]
    return summary, problems


def summarise_engine(result, on_gpu, environment):
    engines = result["engines"]
    summary = {"world_size": result["world_size"], "backend": result["backend"],
               "ddp_step_s": engines["ddp"]["median_step_s"], "zero1_step_s": engines["zero1"]["median_step_s"],
               "zero1_over_ddp": result["ratios"]["zero1_over_ddp"],
               "goal_met": result["goal"]["met"]["zero1_over_ddp"], "ratios": result["ratios"]}
    if result["world_size"] == 1:
        summary["note"] = ("world size 1 on one GPU: DDP's gradient all-reduce and ZeRO-1's optimizer-state "
                           "partitioning have no peer, so this compares the engines' per-step overhead, not their "
                           "communication")
    return summary, []


def summarise_gpu_tests(path, on_gpu, environment):
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    skipped, failed = {}, []
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        if case.find("skipped") is not None:
            skipped[name] = case.find("skipped").get("message", "")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
    summary = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               "failed": failed, "skip_reasons": sorted(set(skipped.values()))}
    problems = []
    if counts["tests"] == 0:
        problems.append("no GPU-marked test was collected")
    if failed:
        problems.append(f"failed: {', '.join(failed)}")
    if on_gpu and skipped:  # on a GPU a skip hides the path it was to prove
        name, reason = next(iter(skipped.items()))
        problems.append(f"skipped on a GPU: {name} ({reason})")
    if not on_gpu and summary["passed"]:
        problems.append("a GPU-marked test ran without CUDA (it must skip)")
    return summary, problems


SUMMARISE = {"decode": summarise_decode, "faces": summarise_faces, "model": summarise_model,
             "train": summarise_train, "engine": summarise_engine, "gpu_tests": summarise_gpu_tests}


# ---------------------------------------------------------------------------------------------------
# Running


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Log:
    """The kit's own lines on stdout and in OUT_DIR/kit.log; each step's output is appended there too."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.write_text("")

    def say(self, line=""):
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")

    def append(self, title, path):
        with open(self.path, "a") as handle, open(path, errors="replace") as source:
            handle.write(f"\n===== {title} =====\n")
            shutil.copyfileobj(source, handle)


# Run by the Python that runs the steps, with their environment: what imports, the GPU and its name tag.
PROBE = r"""
import json, re
from importlib import metadata
found = {}
for module, package in (("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"),
                        ("nvidia.dali", "nvidia-dali-cuda130"), ("av", "av"), ("webdataset", "webdataset"),
                        ("facenet_pytorch", "facenet-pytorch"), ("deepspeed", "deepspeed"), ("pydantic", "pydantic")):
    try:
        __import__(module)
        found[module] = metadata.version(package)
    except Exception as error:
        found[module] = f"unavailable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
import torch
from dfdtrain.data.decode.decoders import dali_usable
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
tag = re.sub(r"[^a-z0-9]+", "-", re.sub(r"^nvidia[ -]", "", gpu.lower())).strip("-") if gpu else None
print(json.dumps({"python": __import__("sys").version.split()[0], "modules": found,
                  "cuda": torch.cuda.is_available(), "gpu": gpu, "tag": tag, "dali_usable": dali_usable()}))
"""


def probe(env, budget):
    completed = subprocess.run(["timeout", "-k", "5", str(budget), sys.executable, "-c", PROBE], cwd=REPO, env=env,
                               capture_output=True, text=True)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise KitError(f"the environment probe failed (exit {completed.returncode}): {last}")
    return json.loads(lines[-1])


def step_environment(on_gpu, fixtures):
    env = dict(os.environ)
    earlier = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    # the carried packages first (on the GPU machine), then this checkout's dfdtrain
    env["PYTHONPATH"] = os.pathsep.join(([str(SITE)] if on_gpu else []) + [str(REPO)] + earlier)
    env["PYTHONUNBUFFERED"] = "1"
    env["DFDTRAIN_FIXTURES"] = str(fixtures)
    env["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    if not on_gpu:  # the CPU variants run at once: one thread each, no OpenMP threads spinning against each other
        env["OMP_NUM_THREADS"] = "1"
    return env


@dataclasses.dataclass
class Running:
    step: Step
    process: subprocess.Popen
    handle: object
    started: float
    out: Path
    log: Path
    budget: int
    command: list


def start(step, out_dir, tag, on_gpu, env, logs, budget):
    out = Path(out_dir) / step.output.format(tag=tag)
    out.unlink(missing_ok=True)  # a stale result must never pass for this run's
    arguments = [argument.format(out=out) for argument in (step.gpu if on_gpu else step.cpu)]
    log = Path(logs) / f"{step.name}.log"
    handle = open(log, "w")
    # timeout kills the whole process group at the budget (torchrun and DataLoader workers included)
    command = ["timeout", "-k", str(KILL_GRACE_S), str(budget), sys.executable, *arguments]
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                               env=env)
    return Running(step, process, handle, time.time(), out, log, budget, command)


def finish(running, on_gpu, environment):
    code = running.process.wait()
    running.handle.close()
    seconds = round(time.time() - running.started, 1)
    record = {"status": "ok", "rc": code, "seconds": seconds, "budget_s": running.budget,
              "result": running.out.name, "summary": None, "problems": []}
    if code == 124:
        record["status"] = "timed out"
        record["problems"].append(f"ran past its {running.budget} s budget")
    elif code == 137:
        record["status"] = "timed out"
        record["problems"].append(f"killed: still running {KILL_GRACE_S} s past its {running.budget} s budget, or "
                                  "out of memory")
    elif code != 0:
        record["status"] = "failed"
        record["problems"].append(f"exit {code}")
    if running.out.is_file():
        try:
            loaded = running.out if running.step.name == "gpu_tests" else json.loads(running.out.read_text())
            record["summary"], problems = SUMMARISE[running.step.name](loaded, on_gpu, environment)
            record["problems"] += problems
        except (ValueError, KeyError, TypeError, ElementTree.ParseError) as error:
            record["problems"].append(f"{running.out.name}: incomplete ({type(error).__name__}: {error})")
    elif record["status"] == "ok":
        record["problems"].append(f"{running.out.name} was not written")
    if record["problems"] and record["status"] == "ok":
        record["status"] = "failed"
    return record


def headline(name, record):
    """One short line of a step's figures for the console."""
    summary = record.get("summary") or {}
    if name == "decode":
        if "dali_gpu_speedup_over_pyav" in summary:
            ratios = summary["dali_gpu_speedup_over_pyav"]
            return (f"DALI/PyAV x{ratios['original']} originals, x{ratios['faces']} face clips; frames within "
                    f"tolerance: {summary['dali_vs_pyav_within_tolerance']}")
        return f"pyav only ({summary.get('dali_gpu', '?')})"
    if name == "faces":
        if summary.get("cpu_over_gpu_wall") is not None:
            return (f"{summary['wall_s_per_video']['cuda']} s/video on the GPU, {summary['wall_s_per_video']['cpu']} "
                    f"on the CPU (x{summary['cpu_over_gpu_wall']}); goal <= {summary['goal']} s met: "
                    f"{summary['goal_met']}")
        return f"{summary.get('wall_s_per_video', {}).get('cpu')} s/video on the CPU only ({summary.get('cuda', '?')})"
    if name == "model":
        return "; ".join(f"{case} bf16+CL MFU {figures['bf16_channels_last']['mfu']}, x"
                         f"{figures['bf16_channels_last_over_fp32_nchw']} over fp32/NCHW"
                         for case, figures in summary.items())
    if name == "train":
        return f"real/synthetic {summary.get('real_over_synthetic')} (goal met: {summary.get('goal_met')})"
    if name == "engine":
        return f"ZeRO-1/DDP {summary.get('zero1_over_ddp')} at world size {summary.get('world_size')}"
    if name == "gpu_tests":
        return (f"{summary.get('passed')} passed, {len(summary.get('failed', []))} failed, "
                f"{summary.get('skipped')} skipped")
    return ""


def print_plan(log, mode, wheels, calls, tree, fixtures, chosen, on_gpu):
    total = sum(wheel.bytes for wheel in wheels)
    pinned = read_constraints(CONSTRAINTS)
    both = [wheel.pin for wheel in wheels if wheel.name in pinned]
    log.say(f"GPU acceptance kit: {mode}")
    log.say(f"wheels  {display(WHEEL_LIST)}: {len(wheels)} pinned wheels for cp312 manylinux x86_64, "
            f"{total / MIB:.1f} MiB; {len(both)} also in constraints.txt, same versions ({', '.join(both)})")
    for line in wheel_lines(wheels, {wheel.file: wheel.bytes for wheel in wheels}):
        log.say(line)
    log.say(f"carry   {len(calls)} device calls of at most {CARRY_LIMIT // MIB} MiB each (the tree that travels: "
            f"{tree / MIB:.1f} MiB; fixtures {fixtures / MIB:.1f} MiB with the last call):")
    for line in calls_text(calls):
        log.say(line)
    dry = f" (dry run: all at once, {DRY_RUN_STEP_BUDGET_S} s each; nothing is timed for the record)"
    log.say(f"steps   budget {budget_s()} s of {TOTAL_BUDGET_S} s; on the GPU one after another, each under `timeout`"
            f"{'' if on_gpu else dry}:")
    log.say(f"  {'install':<10} {INSTALL_BUDGET_S:>4} s  receive the last load, cat the parts, sha256, pip install "
            f"--no-index --no-deps --target {SITE}, import check")
    for step in chosen:
        log.say(f"  {step.name:<10} {step.budget_s:>4} s  {step.what}")
        log.say(f"  {'':<10} {'':>6}  $ {command_text(step.gpu, 'OUT_DIR/' + step.output.format(tag='TAG'))}")


def install_dry_run(log, wheels, carry=CARRY):
    """The install step's CPU variant: with a prepared carry folder, receive every load into a scratch folder,
    reassemble, check sha256 and ask pip whether it would install them on cp312 (pip install --dry-run)."""
    if not any(Path(carry).glob("load*/manifest.json")):
        return {"status": "ok", "carry_prepared": False,
                "note": f"{CARRY_NAME}/ is not prepared here (bash benchmarks/gpu/prepare.sh): the wheel list was "
                        "checked, no wheel was read"}
    with tempfile.TemporaryDirectory() as scratch:
        manifest, missing, _ = receive(carry, Path(scratch) / "parts")
        if missing:
            raise KitError(f"{CARRY_NAME}: pieces missing from the loads: {', '.join(missing)} (prepare again)")
        listed = {wheel.file for wheel in wheels}
        packed = {wheel["file"] for wheel in manifest["wheels"]}
        if listed != packed:
            raise KitError(f"{CARRY_NAME}: packed for another wheel list (differs in "
                           f"{', '.join(sorted(listed ^ packed))}): bash benchmarks/gpu/prepare.sh again")
        paths = reassemble(manifest, Path(scratch) / "parts")
        command = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-index", "--no-deps",
                   "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                   *[flag for platform in PLATFORMS for flag in ("--platform", platform)],
                   "--target", str(Path(scratch) / "site"), *map(str, paths)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise KitError(f"pip install --dry-run refused the carried wheels: "
                           f"{(completed.stderr.strip().splitlines() or ['?'])[-1]}")
    log.say(f"  install    ok  {len(paths)} wheels reassembled from {len(manifest['calls'])} loads, sha256 ok, pip "
            "would install them on cp312")
    return {"status": "ok", "carry_prepared": True, "wheels": len(paths), "loads": len(manifest["calls"])}


def install_on_gpu(log, budget):
    """Receive this call's load, check every piece arrived, reassemble, pip install into SITE (once per machine)."""
    manifest, missing, received = receive()
    log.say(f"  install    received {', '.join(received) or 'no load in this call'} into {PARTS}")
    if missing:
        raise KitError(f"{PARTS}: missing {missing_text(manifest, missing)}: the machine went back between calls, or "
                       "those calls were not made; make them again, back to back, then this one")
    paths = reassemble(manifest)
    stamp = hashlib.sha256("".join(sorted(w["sha256"] for w in manifest["wheels"])).encode()).hexdigest()
    marker = SITE / ".kit-installed"
    if marker.is_file() and marker.read_text() == stamp:
        log.say(f"  install    already in {SITE} (this machine ran the kit before)")
        return {"status": "ok", "wheels": len(paths), "reused": True}
    started = time.time()
    command = ["timeout", "-k", "5", str(budget), sys.executable, "-m", "pip", "install", "-q", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, paths)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise KitError(f"pip install into {SITE} failed (exit {completed.returncode}): "
                       f"{(completed.stderr.strip().splitlines() or ['?'])[-1]}")
    marker.write_text(stamp)
    log.say(f"  install    {len(paths)} wheels reassembled, sha256 ok, installed into {SITE} in "
            f"{time.time() - started:.0f} s")
    return {"status": "ok", "wheels": len(paths), "reused": False}


def run(out_dir, dry_run, wheel_list=WHEEL_LIST, only=None):
    wheels = read_wheel_list(wheel_list)  # first, before anything is printed: a bad list is one line
    chosen = [step for step in steps() if not only or step.name in only]
    unknown = set(only or []) - {step.name for step in steps()}
    if unknown:
        raise KitError(f"--only: unknown step(s) {', '.join(sorted(unknown))} (known: "
                       f"{', '.join(step.name for step in steps())})")
    on_gpu = not dry_run
    if dry_run:
        tree = check_tree()
        fixtures = fixtures_root()
    else:  # on the GPU machine the tree is the copy the call sent, and the fixtures came in the last load
        tree = 0
        fixtures = CARRY / "fixtures" if (CARRY / "fixtures").is_dir() else fixtures_root()
    calls = carry_plan({wheel.file: wheel.bytes for wheel in wheels}, tree, fixture_bytes(fixtures))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "kit.log")
    print_plan(log, "dry run on the CPU (checks, the plan, each step's CPU-sized variant; no GPU figures)" if dry_run
               else "GPU run", wheels, calls, tree, fixture_bytes(fixtures), chosen, on_gpu)
    plan = {"kit": "dfdtrain GPU acceptance kit", "mode": "dry-run" if dry_run else "gpu", "created": now(),
            "total_budget_s": TOTAL_BUDGET_S, "budget_s": budget_s(), "install_budget_s": INSTALL_BUDGET_S,
            "wheels": {"list": display(wheel_list), "bytes": sum(wheel.bytes for wheel in wheels),
                       "wheels": [{"pin": w.pin, "file": w.file, "bytes": w.bytes,
                                   "parts": len(pieces_of(w.file, w.bytes, PART_BYTES))} for w in wheels]},
            "carry": {"limit_bytes": CARRY_LIMIT, "part_bytes": PART_BYTES, "tree_bytes": tree, "calls": calls},
            "fixtures": str(fixtures), "steps": []}
    started = time.time()
    deadline = started + TOTAL_BUDGET_S
    try:
        environment = install_and_probe(log, plan, wheels, on_gpu, fixtures, started)
    except KitError as error:  # recorded in plan.json and kit.log too: they are what comes back from the device
        plan.update(ok=False, error=str(error), seconds=round(time.time() - started, 1))
        write_plan(out_dir, plan)
        with open(log.path, "a") as handle:
            handle.write(f"gpu kit: {error}\n")
        raise
    tag = environment["tag"] if on_gpu else "quick"
    plan["tag"] = tag
    env = step_environment(on_gpu, fixtures)
    write_plan(out_dir, plan)
    log.say(f"running {len(chosen)} steps" + (" one after another" if on_gpu else " at once (CPU variants)") + " ...")
    with tempfile.TemporaryDirectory() as logs:
        batches = [[step] for step in chosen] if on_gpu else [chosen]  # on the GPU nothing may share the device
        for batch in batches:
            running = []
            for step in batch:
                # on the GPU a step gets its budget, or what is left of the 9 minutes if that is less
                budget = min(step.budget_s, int(deadline - time.time()) - KILL_GRACE_S) if on_gpu \
                    else DRY_RUN_STEP_BUDGET_S
                if budget < MIN_STEP_S:
                    report_skipped(log, plan, step, f"not run: the {TOTAL_BUDGET_S} s budget is spent")
                    continue
                running.append(start(step, out_dir, tag, on_gpu, env, logs, budget))
            while running:  # report each step as it ends
                ended = [item for item in running if item.process.poll() is not None]
                if not ended:
                    time.sleep(0.2)
                for item in ended:
                    running.remove(item)
                    report_step(log, plan, item, finish(item, on_gpu, environment))
                    write_plan(out_dir, plan)
    order = [step.name for step in chosen]
    plan["steps"].sort(key=lambda record: order.index(record["name"]))
    plan["seconds"] = round(time.time() - started, 1)
    plan["ok"] = all(record["status"] == "ok" for record in plan["steps"])
    write_plan(out_dir, plan)
    failed = [record["name"] for record in plan["steps"] if record["status"] != "ok"]
    log.say(f"{'all steps ok' if plan['ok'] else 'FAILED: ' + ', '.join(failed)}"
            f" in {plan['seconds']} s; wrote {display(out_dir / 'plan.json')}")
    return 0 if plan["ok"] else 1


def report_step(log, plan, item, record):
    """A finished step: into the plan, its output into kit.log, one line (and on failure its tail) on the console."""
    step = item.step
    plan["steps"].append({"name": step.name, "what": step.what, "command": shlex.join(["python3", *item.command[5:]]),
                          "gpu_command": command_text(step.gpu), "cpu_command": command_text(step.cpu), **record})
    log.append(f"{step.name} (exit {record['rc']}, {record['seconds']} s)", item.log)
    line = f"  {step.name:<10} {record['status']:<9} {record['seconds']:>6} s  {record['result']}"
    log.say(line + (f"  {headline(step.name, record)}" if record["summary"] else ""))
    if record["problems"]:
        log.say(f"             problems: {'; '.join(record['problems'])}")
        with open(item.log, errors="replace") as handle:
            for tail in handle.read().splitlines()[-15:]:
                log.say(f"             | {tail}")


def report_skipped(log, plan, step, reason):
    plan["steps"].append({"name": step.name, "what": step.what, "command": None, "gpu_command": command_text(step.gpu),
                          "cpu_command": command_text(step.cpu), "status": "not run", "rc": None, "seconds": 0,
                          "budget_s": 0, "result": None, "summary": None, "problems": [reason]})
    log.say(f"  {step.name:<10} not run    {reason}")


def command_text(arguments, out="OUT_DIR/RESULT"):
    return shlex.join(["python3", *[argument.format(out=out) for argument in arguments]])


def install_and_probe(log, plan, wheels, on_gpu, fixtures, started):
    """The install step (its CPU variant in the dry run), then what imports where the steps will run."""
    plan["install"] = install_on_gpu(log, INSTALL_BUDGET_S) if on_gpu else install_dry_run(log, wheels)
    environment = probe(step_environment(on_gpu, fixtures), max(15, int(INSTALL_BUDGET_S - (time.time() - started))))
    plan["environment"] = environment
    log.say(f"python {environment['python']}; GPU: {environment['gpu'] or 'none'}; " + ", ".join(
        f"{module} {version}" for module, version in environment["modules"].items()))
    plan["install"]["seconds"] = round(time.time() - started, 1)
    if on_gpu:
        broken = {module: version for module, version in environment["modules"].items()
                  if version.startswith("unavailable")}
        if broken:
            module, why = next(iter(broken.items()))
            raise KitError(f"after the install {module} does not import: {why}")
        if not environment["cuda"]:
            raise KitError("torch sees no GPU here (torch.cuda.is_available() is False): on a CPU run "
                           "bash benchmarks/gpu/run.sh --dry-run OUT_DIR")
    return environment


def write_plan(out_dir, plan):
    (Path(out_dir) / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="on a CPU: check, print the plan, run the CPU variants")
    mode.add_argument("--receive", action="store_true", help="on the GPU machine: keep this call's load in "
                      f"{PARTS} (every call but the last)")
    mode.add_argument("--prepare", action="store_true", help=f"here: download, split and pack into {CARRY_NAME}/")
    parser.add_argument("--wheels", default=str(WHEEL_LIST), help="the wheel list (default benchmarks/gpu/wheels.txt)")
    parser.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    parser.add_argument("out_dir", nargs="?", help="where plan.json, kit.log and each step's result go")
    args = parser.parse_args(argv)
    try:
        if args.prepare:
            prepare(Path(args.wheels))
            return 0
        if args.receive:
            manifest, missing, received = receive()
            print(f"received {', '.join(received) or 'no load in this call'}; {PARTS}: "
                  + (f"still missing {missing_text(manifest, missing)}" if missing
                     else f"every piece of the {len(manifest['wheels'])} wheels is here"), flush=True)
            return 0
        if not args.out_dir:
            parser.error("OUT_DIR is needed (or --receive / --prepare)")
        return run(args.out_dir, args.dry_run, Path(args.wheels), [name for name in args.only.split(",") if name])
    except KitError as error:
        print(f"gpu kit: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
