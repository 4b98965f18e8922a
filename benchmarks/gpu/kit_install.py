"""The GPU acceptance kit's install step and what it finds: on the GPU machine, this call's load received, every
piece checked, the wheels reassembled and pip-installed into the site folder once per machine; in the dry run,
the same with a prepared carry folder into a scratch folder and `pip install --dry-run`; then the environment
the steps will run in (PYTHONPATH, fixtures) probed by the Python that runs them: what imports, the GPU, its tag.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kit_carry import CARRY, CARRY_NAME, PARTS, missing_text, reassemble, receive
from kit_steps import INSTALL_BUDGET_S
from kit_wheels import PLATFORMS, REPO, KitError

# On the GPU machine: where the carried wheels are installed (first on the steps' PYTHONPATH).
SITE = Path(os.environ.get("GPU_KIT_SITE", "/tmp/site"))


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
