"""``bench shard``'s parts measurement (issue 29): the face store of one manifest written by one process and by 2
parts on this machine at the same time, as a user runs them: real ``dfdtrain shard`` command lines.

  one process  ``dfdtrain shard --manifest M --out A --store faces --workers 1 --shard-size S --quiet``
  2 parts      the same with ``--part 0/2`` and ``--part 1/2`` into B, both started at once; then
               ``dfdtrain shard --merge --out B``

Wall seconds by the clock here (the parts' wall: from their start until both have exited; the merge apart).
Per part, from its record in ``B/.parts/`` (read before the merge, which removes them): the work ``--part``
predicted for it, its own measured seconds (finished - started), videos and shards. The union is byte-identical
when B's index.json lists the shards of A's, each with the same name, sha256 and keys.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PARTS = 2
# set by a launcher, these would make each command a rank of someone else's job (dfdtrain reads them for --part):
# the parts here are two plain processes on this machine
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _environment():
    return {name: value for name, value in os.environ.items()
            if name not in LAUNCHER_VARIABLES and not name.startswith("SLURM_")}


def _command(*args):
    return [sys.executable, "-m", "dfdtrain", "shard", *map(str, args)]


def _start(arguments, tree, log):
    """A ``dfdtrain shard`` process of the dfdtrain this benchmark imports (its tree first on the path)."""
    with open(log, "w") as errors:  # the process keeps its own copy of the handle
        return subprocess.Popen(_command(*arguments), cwd=tree, env=_environment(), stdout=subprocess.DEVNULL,
                                stderr=errors)


def _finish(process, log):
    if process.wait() != 0:
        why = (Path(log).read_text().strip().splitlines() or ["failed"])[-1]
        raise SystemExit(f"shard benchmark: {' '.join(process.args[2:])}: {why}")


def _run(arguments, tree, log):
    """Wall seconds of one ``dfdtrain shard`` command, run to its end."""
    started = time.perf_counter()
    process = _start(arguments, tree, log)
    _finish(process, log)
    return time.perf_counter() - started


def _imbalance(values):
    """Largest / smallest (None when a part got no work: no finite ratio)."""
    return round(max(values) / min(values), 3) if min(values) > 0 else None


def _shards(index):
    """{shard name: (sha256, keys)} of an index.json."""
    return {shard["name"]: (shard["sha256"], shard["keys"]) for shard in index["shards"]}


def parts_comparison(manifest, folder, shard_size):
    """One process vs 2 parts started together, each ``--workers 1``, on the face store of ``manifest``."""
    import dfdtrain
    from dfdtrain.data.shards.folder import RECORDS_FOLDER
    from dfdtrain.data.shards.parts import Part

    tree = str(Path(dfdtrain.__file__).resolve().parents[1])
    folder.mkdir(parents=True, exist_ok=True)
    one, two = folder / "one_process", folder / "two_parts"
    options = ["--manifest", manifest, "--store", "faces", "--workers", 1, "--shard-size", shard_size, "--quiet"]
    one_s = _run([*options, "--out", one], tree, folder / "one_process.log")
    started = time.perf_counter()
    logs = [folder / f"part{index}.log" for index in range(PARTS)]
    processes = [_start([*options, "--out", two, "--part", f"{index}/{PARTS}"], tree, log)
                 for index, log in enumerate(logs)]
    process_s = [None] * PARTS
    while None in process_s:  # each part's exit as it happens (a wait in start order would hide the first)
        for index, process in enumerate(processes):
            if process_s[index] is None and process.poll() is not None:
                process_s[index] = time.perf_counter() - started
        time.sleep(0.02)
    for process, log in zip(processes, logs):
        _finish(process, log)
    two_s = max(process_s)
    records = [json.loads((two / RECORDS_FOLDER / Part(index, PARTS).record_name).read_text())
               for index in range(PARTS)]
    merge_s = _run(["--merge", "--out", two, "--quiet"], tree, folder / "merge.log")
    expected = _shards(json.loads((one / "index.json").read_text()))
    merged = _shards(json.loads((two / "index.json").read_text()))
    differing = sorted(name for name in set(expected) | set(merged) if expected.get(name) != merged.get(name))
    parts = [{"part": record["part"], "predicted_seconds": record["predicted_seconds"],
              "seconds": round(record["finished"] - record["started"], 2), "videos": record["samples"],
              "shards": len(record["shards"])} for record in records]
    return {
        "command": f"dfdtrain shard --manifest M --store faces --workers 1 --shard-size {shard_size} --quiet, "
                   f"--out A (one process) and --out B --part I/{PARTS} (each part), then --merge --out B",
        "shard_size": shard_size,
        "videos": sum(part["videos"] for part in parts),
        "shards": len(expected),
        "one_process_wall_s": round(one_s, 2),
        "two_parts_wall_s": round(two_s, 2),
        "merge_s": round(merge_s, 2),
        "speedup": round(one_s / two_s, 3),
        "parts": parts,
        "part_process_s": [round(seconds, 2) for seconds in process_s],  # each part's command, start to exit
        "predicted_imbalance": _imbalance([part["predicted_seconds"] for part in parts]),
        "measured_imbalance": _imbalance([part["seconds"] for part in parts]),
        "union_byte_identical": not differing,
        "differing_shards": differing,  # by name: missing from one index, or another sha256 or keys
    }
