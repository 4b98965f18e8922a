"""The GPU acceptance kit's wheel list and what every part of the kit shares: where the kit and the repository
are, the pip download line's platforms, the kit's one-line error, paths as the user types them, and JSON out.
A wheel list is refused in one line unless every wheel is pinned, installs on CPython 3.12 manylinux x86_64 and
agrees with constraints.txt. Standard library only (kit.py runs before anything is installed).
"""

import dataclasses
import datetime
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = Path(__file__).resolve().parent
WHEEL_LIST = KIT / "wheels.txt"
CONSTRAINTS = REPO / "constraints.txt"
MIB = 1 << 20

# The pip download line of the device README (/work/.library/device/README.md): cp312, these platforms.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
PIP_DOWNLOAD = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                "--implementation", "cp", *[flag for platform in PLATFORMS for flag in ("--platform", platform)]]


class KitError(Exception):
    """One line for the user: the file or thing at fault and why."""


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path, value):
    """``value`` as indented JSON in ``path``, ending in a newline (the plan, the manifest, the calls)."""
    Path(path).write_text(json.dumps(value, indent=2) + "\n")


def display(path):
    """A path as the user would type it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


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
