"""What the GPU acceptance kit carries to the GPU machine, and how: the tree that travels with every device call,
the real fixtures, the plan of calls (wheels over 60 MiB cut as `split -b` would, pieces packed first fit into one
load per call), preparing the loads here (download, build, split, manifest) and, on the GPU machine, receiving
each call's load, telling what is missing and putting the wheels back together (sha256-checked).
"""

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kit_wheels import MIB, PIP_DOWNLOAD, REPO, WHEEL_LIST, KitError, display, now, read_wheel_list, write_json

CARRY = REPO / ".gpu-carry"  # ignored by git: what the device calls carry
CARRY_NAME = ".gpu-carry"
# On the GPU machine: the parts of every call, kept while it stays warm (outside the repo copy, which each call
# lays anew).
PARTS = Path(os.environ.get("GPU_KIT_PARTS", "/root/parts"))
CARRY_LIMIT = 64 * MIB  # the device tool's limit per call: the tree that travels plus every carried path
PART_BYTES = 60 * MIB  # `split -b 60M`: a wheel larger than this travels in parts of this size
TREE_MARGIN = 1 * MIB  # room for files that appear in the tree between planning and the calls
RECEIVE_TIMEOUT_S = 60
FINAL_TIMEOUT_S = 600  # the last call's timeout_s (the device tool's most): the 9-minute run, room for the tail

# Packages PyPI has only as an sdist: `pip wheel --no-deps` builds their wheel here (name -> why it is fine).
BUILT_HERE = {"deepspeed": "PyPI has only DeepSpeed's sdist; its wheel is pure Python with no prebuilt ops, and "
                           "ZeRO with a torch optimizer (what dfdtrain passes) needs none"}
# The real fixtures the GPU run reads (../shared/fixtures does not travel): shard_decode.py's videos, shard_faces.py's
# and tests/integration/test_gpu.py's (a portrait DFDC clip; the FF++ 183/253 group with its fakes and the official splits).
FFPP_FAKES = [f"ffpp/manipulated_sequences/{method}/c40/videos/{pair}.mp4"
              for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures") for pair in ("183_253", "253_183")]
FIXTURES = ["dfdc/dfdc_train_part_0/brtujopkby.mp4", "dfdc/dfdc_train_part_0/metadata.json",
            "ffpp/original_sequences/youtube/c40/videos/183.mp4", "ffpp/original_sequences/youtube/c40/videos/253.mp4",
            *FFPP_FAKES, "labels/ffpp/train.json", "labels/ffpp/val.json", "labels/ffpp/test.json"]


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
        write_json(load / "manifest.json", manifest)
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
    write_json(carry / "calls.json", calls)
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
