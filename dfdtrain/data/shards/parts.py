"""A shard run split into parts (``--part I/N``, or one part per rank under torchrun or srun) writing into one
shared folder, and the merge that writes its index.json.

Each part writes whole shards, assigned by predicted work (``assign_parts``), so a shard is written by exactly
one part and the shards are those a one-process run writes; a part leaves a part record in ``.parts/``, and
``merge_parts`` (run by hand, or by rank 0 once every part is done) checks them and writes index.json. A part
is refused beside a running one-process run, parts of another part count or another run, and over an
index.json that describes another run.
"""

import collections
import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from dfdtrain.data import storage
from dfdtrain.data.shards.folder import (RECORDS_FOLDER, earlier_record_names, earlier_records, name_some,
                                         remove_leftover_temp_files, remove_records, remove_stale_shards)
from dfdtrain.data.shards.pending import write_pending
from dfdtrain.data.shards.summary import build_index, earlier_runs, run_summary
from dfdtrain.data.shards.work import predicted_seconds
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, write_json
from dfdtrain.core.locks import DirectoryLock

PART_RECORD = re.compile(r"^part-(\d+)-of-(\d+)\.json$")
PART_FORMAT = "dfdtrain-shard-part/1"


@dataclasses.dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count`` cooperating shard runs into one folder."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise DfdError(f"part {self.index}/{self.count}: the part must be I/N with 0 <= I < N")

    def __str__(self):
        return f"{self.index}/{self.count}"

    @property
    def record_name(self):
        return f"part-{self.index:05d}-of-{self.count:05d}.json"

    @property
    def lock_name(self):
        return f".dfdtrain-part-{self.index:05d}-of-{self.count:05d}.lock"

    @classmethod
    def parse(cls, text):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise DfdError(f"--part {text!r}: expected I/N, e.g. 0/4 (0-based I)")
        return cls(int(match.group(1)), int(match.group(2)))


def shard_work(members, options):
    """One core's predicted seconds to write a shard of these manifest rows (``work.predicted_seconds``)."""
    return sum(predicted_seconds(row, options) for row in members)


def shard_works(plan, options):
    """{shard name: ``shard_work``} in plan order: one read of the manifest, a shard's rows at a time."""
    return {shard.name: shard_work(plan.rows(shard), options) for shard in plan}


def assign_parts(plan, count, options, works=None):
    """{part index: [shard names]}: whole shards, balanced by predicted work (``shard_work``, or ``works`` when
    given: largest first to the part with the least work so far, ties to the lowest index), so a shard is written
    by exactly one part, whatever the part count, and the shards are those a one-process run writes."""
    works = shard_works(plan, options) if works is None else works
    loads = [(0.0, index) for index in range(count)]
    assigned = {index: [] for index in range(count)}
    by_work = sorted(((works[name], name) for name in plan.names), key=lambda item: (-item[0], item[1]))
    for work, name in by_work:
        load, index = min(loads)
        assigned[index].append(name)
        loads[index] = (load + work, index)
    order = {name: position for position, name in enumerate(plan.names)}
    return {index: sorted(names, key=order.get) for index, names in assigned.items()}


def run_hash(hashes):
    """What a run writes, in one digest: every shard's plan hash (``hashes``: {name: plan_hash}), in plan order
    (parts of one run share it)."""
    return hashlib.sha256(json.dumps(list(hashes.values())).encode()).hexdigest()


def _part_records(out_dir):
    """{(index, count): record} of the part records in ``.parts/`` (an unreadable one maps to {})."""
    records = {}
    for path in sorted((out_dir / RECORDS_FOLDER).glob("part-*-of-*.json")):
        match = PART_RECORD.match(path.name)
        if match:
            try:
                records[(int(match.group(1)), int(match.group(2)))] = read_json(path)
            except (OSError, ValueError):
                records[(int(match.group(1)), int(match.group(2)))] = {}
    return records


def _running_parts(out_dir):
    """{(part index, part count): lock owner} of the parts whose lock a live process holds."""
    running = {}
    for path in sorted(out_dir.glob(".dfdtrain-part-*-of-*.lock")):
        match = re.fullmatch(r"\.dfdtrain-part-(\d+)-of-(\d+)\.lock", path.name)
        if match:
            owner = DirectoryLock(out_dir, "shard", name=path.name).live_owner()
            if owner:
                running[(int(match.group(1)), int(match.group(2)))] = owner
    return running


def refuse_while_parts_are_open(out_dir, what, count=None):
    """Refuse ``what`` (a one-process run: ``count`` None, or a part of ``count``) while parts of a run of
    another part count are running or unmerged here; one line naming them."""
    running = [index for index, n in _running_parts(out_dir) if n != count]
    if running:
        raise DfdError(f"{out_dir}: part(s) {name_some([str(i) for i in sorted(running)])} of a partitioned shard "
                       f"run of another part count are running here; {what} would overwrite their shards")
    other = sorted({n for _, n in _part_records(out_dir)} - {count})
    if other:
        n = other[0]
        finished = sorted(i for i, c in _part_records(out_dir) if c == n)
        missing = [str(i) for i in range(n) if i not in finished]
        raise DfdError(f"{out_dir}: holds an unmerged {n}-part run (finished parts: "
                       f"{name_some([str(i) for i in finished]) or 'none'}; missing: {name_some(missing) or 'none'});"
                       f" finish it with --part I/{n} and 'dfdtrain shard --merge --out {out_dir}', or remove "
                       f"{out_dir / RECORDS_FOLDER} to start over; {what} cannot mix part counts")


def _refuse_over_another_index(out_dir, hashes, options, part):
    """Refuse part ``part`` in a folder whose index.json describes another run (other options, another manifest:
    other shards or plan hashes). The part would rewrite shards that index lists and the folder would stop
    matching its index until every part ran again and merged; a part of the very run the index describes only
    keeps or restores shards (the same bytes), which is allowed."""
    path = out_dir / "index.json"
    if not path.exists():
        return
    try:
        index = read_json(path)
        listed = [(entry["name"], entry.get("plan_hash")) for entry in index["shards"]]
        made = index.get("options")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed, made = None, None
    if listed == list(hashes.items()):
        return
    if listed is None:
        why = "an index.json this version cannot read"
    elif made != options:
        changed = sorted(key for key in {*options, *(made if isinstance(made, dict) else {})}
                         if not isinstance(made, dict) or made.get(key) != options.get(key))
        why = f"index.json of a run with other options ({', '.join(changed)})"
    else:
        why = "index.json of a run from another manifest"
    raise DfdError(f"{out_dir}: holds a finished shard run ({why}); part {part} would rewrite shards that index "
                   f"lists and the folder would no longer match it. Use another --out, rerun with that run's "
                   f"options, or remove {path} to re-shard this folder with parts")


def _landmark_setting(landmarks):
    if not isinstance(landmarks, dict):
        return "no --landmarks"
    versions = ", ".join(f"{package} {version}" for package, version in (landmarks.get("version") or {}).items())
    return f"--landmarks {landmarks.get('model')}" + (f" ({versions})" if versions else "")


def _refuse_mixed_landmarks(out_dir, records, what):
    """One line when part records (and this part's, as {"part", "options"}) differ in their landmark setting:
    the model and its versions (index.json's ``landmarks``), or none."""
    settings = collections.defaultdict(list)
    for record in records:
        landmarks = (record.get("options") or {}).get("landmarks")
        settings[json.dumps(landmarks, sort_keys=True)].append(record.get("part", -1))
    if len(settings) > 1:
        described = "; ".join(f"part(s) {name_some([str(n) for n in sorted(numbers)])} with "
                              f"{_landmark_setting(json.loads(key))}" for key, numbers in settings.items())
        raise DfdError(f"{out_dir}: {what}: the parts were made with different landmark settings ({described}); "
                       f"rerun them with the same --landmarks")


def write_part(plan, hashes, out_dir, options, source, part, work):
    """Part ``part`` of a run: its shards of ``plan`` (``assign_parts``), kept or written, and its part record;
    ``hashes``: {name: plan_hash} of the whole plan."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out_dir, f"shard --part {part}", name=part.lock_name) as lock:
        whole = DirectoryLock(out_dir, "shard").live_owner()
        if whole:
            raise DfdError(f"{out_dir}: a one-process shard run (pid {whole.get('pid', '?')} on "
                           f"{whole.get('host', '?')}) is writing here; part {part} would overwrite its shards")
        refuse_while_parts_are_open(out_dir, f"part {part}", count=part.count)
        this_run = run_hash(hashes)
        _refuse_mixed_landmarks(out_dir, [record for (i, n), record in _part_records(out_dir).items()
                                          if n == part.count and i != part.index and record]
                                + [{"part": part.index, "options": options}], f"part {part}")
        others = sorted(i for (i, n), record in _part_records(out_dir).items()
                        if n == part.count and i != part.index and record.get("run") != this_run)
        if others:
            raise DfdError(f"{out_dir}: part(s) {name_some([str(i) for i in others])} of {part.count} here were made "
                           f"from another manifest or other options; rerun part {part} with their command, or "
                           f"remove {out_dir / RECORDS_FOLDER} to start over")
        _refuse_over_another_index(out_dir, hashes, options, part)
        started = time.time()
        works = shard_works(plan, options)
        mine = set(assign_parts(plan, part.count, options, works)[part.index])
        own_plan = plan.only(mine)
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        notes += remove_leftover_temp_files(out_dir, mine, only_planned=True)
        (out_dir / RECORDS_FOLDER / part.record_name).unlink(missing_ok=True)  # not finished until rewritten
        earlier = earlier_records(out_dir, own_plan)
        records, resumed, counts = write_pending(own_plan, hashes, out_dir, options, earlier, work, with_keys=False)
        record = {"format": PART_FORMAT, "part": part.index, "parts": part.count,
                  "run": this_run, "plan": plan.names, "plan_hashes": list(hashes.values()),
                  "shards": own_plan.names, "options": options, "manifest": source,
                  "host": socket.gethostname(), "pid": os.getpid(), "started": started, "finished": time.time(),
                  "resumed_shards": resumed, "counts": counts, "notes": notes,
                  "predicted_seconds": round(sum(works[name] for name in own_plan.names), 2),
                  "samples": sum(records[name]["samples"] for name in mine)}
        write_json(out_dir / RECORDS_FOLDER / part.record_name, record)
        return record


class _KeysInRecord:
    """A shard's keys in the index being merged: read from the shard's record when index.json is written, one
    shard at a time (``write_json``'s ``default``)."""

    def __init__(self, record_path):
        self.record_path = record_path

    def read(self):
        return read_json(self.record_path)["keys"]


def merge_parts(out_dir, wait=False, progress=False, poll_seconds=2.0, grace_seconds=120.0):
    """index.json from the part records of a partitioned run in ``out_dir``; returns the index without the
    shards' key lists (index.json has them; all at once they are ~80 bytes a video).

    Refused with one line when parts are missing or unfinished, of different runs, or running (``wait=True``:
    wait for running parts instead, as rank 0 of a torchrun job does, and give up with one line when a missing
    part is neither finished nor running for ``grace_seconds``). Shards named like ours that the plan does not
    list are removed, and ``.parts/`` with them."""
    if storage.is_url(out_dir):
        raise DfdError(f"{storage.redact(out_dir)}: parts are merged in the shared folder they were written to")
    out_dir = Path(out_dir)
    parts = _wait_for_parts(out_dir, progress, poll_seconds, grace_seconds) if wait else _part_records(out_dir)
    if not parts:
        raise DfdError(f"{out_dir}: no finished part to merge ({out_dir / RECORDS_FOLDER} holds no part record); "
                       f"run 'dfdtrain shard --part I/N' first")
    counts = sorted({count for _, count in parts})
    if len(counts) != 1:
        raise DfdError(f"{out_dir}: part records of {len(counts)} part counts ({', '.join(map(str, counts))}); "
                       f"remove {out_dir / RECORDS_FOLDER} and shard again")
    count = counts[0]
    running = [index for index, n in _running_parts(out_dir) if n == count]
    if running:
        raise DfdError(f"{out_dir}: cannot merge while part(s) {name_some([str(i) for i in sorted(running)])} of "
                       f"{count} are running")
    missing = [str(index) for index in range(count) if not parts.get((index, count))]
    if missing:
        raise DfdError(f"{out_dir}: cannot merge: part(s) {name_some(missing)} of {count} are missing or "
                       f"unfinished; run them with --part I/{count}, then merge")
    records_by_part = [parts[(index, count)] for index in range(count)]
    _refuse_mixed_landmarks(out_dir, records_by_part, "cannot merge")
    runs = collections.Counter(record["run"] for record in records_by_part)
    if len(runs) > 1:
        common = runs.most_common(1)[0][0]
        odd = [str(record["part"]) for record in records_by_part if record["run"] != common]
        raise DfdError(f"{out_dir}: cannot merge: part(s) {name_some(odd)} of {count} were made from another "
                       f"manifest or other options than the rest; rerun them with the same command")
    first = records_by_part[0]
    with DirectoryLock(out_dir, "shard --merge") as lock:
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        shard_records, expected = {}, dict(zip(first["plan"], first["plan_hashes"]))
        owners = {name: record["part"] for record in records_by_part for name in record["shards"]}
        for name in first["plan"]:
            rerun = f"rerun part {owners.get(name, '?')}/{count}, then merge"
            record_path = out_dir / RECORDS_FOLDER / f"{name}.json"
            try:
                record = read_json(record_path)
            except (OSError, ValueError):
                raise DfdError(f"{out_dir}: cannot merge: the record of {name} is missing; {rerun}") from None
            if record.get("plan_hash") != expected[name]:
                raise DfdError(f"{out_dir}: cannot merge: {name} was written from another manifest or other "
                               f"options; {rerun}")
            tar = out_dir / name
            if not tar.is_file() or tar.stat().st_size != record.get("bytes"):
                raise DfdError(f"{out_dir}: cannot merge: {name} is missing or not the size its record says; "
                               f"{rerun}")
            # the keys stay in the record file until index.json is written (every shard's at once: ~80 bytes a
            # video), in their place in the record
            shard_records[name] = {field: _KeysInRecord(record_path) if field == "keys" else value
                                   for field, value in record.items()}
        planned = set(first["plan"])
        earlier = earlier_record_names(out_dir) | set(shard_records)
        for record in records_by_part:
            notes += record.get("notes", [])
        notes += remove_stale_shards(out_dir, planned, earlier)
        counts = collections.Counter()
        for record in records_by_part:
            counts.update(record.get("counts", {}))
        seconds = max(record["finished"] for record in records_by_part) - min(record["started"]
                                                                             for record in records_by_part)
        resumed = sum(record["resumed_shards"] for record in records_by_part)
        runs = earlier_runs(out_dir, resumed, first["options"]) + [
            run_summary(seconds, len(first["plan"]) - resumed, resumed, counts, parts=count)]
        index = build_index(first["plan"], shard_records, first["options"], first["manifest"], runs)
        index["parts"] = [{"part": record["part"], "host": record["host"], "shards": len(record["shards"]),
                           "samples": record["samples"], "resumed_shards": record["resumed_shards"],
                           "seconds": round(record["finished"] - record["started"], 2)} for record in records_by_part]
        if notes:
            index["notes"] = notes
        write_json(out_dir / "index.json", index, default=_KeysInRecord.read)
        for shard in index["shards"]:
            shard.pop("keys", None)
        for name in (*first["plan"], *(Part(i, count).record_name[:-len(".json")] for i in range(count))):
            (out_dir / RECORDS_FOLDER / f"{name}.json").unlink(missing_ok=True)
        remove_records(out_dir / RECORDS_FOLDER)
        for index_number in range(count):
            lock_path = out_dir / Part(index_number, count).lock_name
            if not DirectoryLock(out_dir, "shard", name=lock_path.name).live_owner():
                lock_path.unlink(missing_ok=True)  # a killed part's lock: nothing holds it now
        return index


def _wait_for_parts(out_dir, progress, poll_seconds, grace_seconds):
    """The part records once every part of the run has finished (rank 0's wait under torchrun/srun)."""
    announced = False
    absent_since = {}
    while True:
        parts = _part_records(out_dir)
        counts = {count for _, count in parts}
        if len(counts) == 1:
            count = counts.pop()
            missing = [index for index in range(count) if not parts.get((index, count))]
            if not missing:
                return parts
            running = {index for index, n in _running_parts(out_dir) if n == count}
            now = time.monotonic()
            for index in missing:
                if index in running:
                    absent_since.pop(index, None)
                elif now - absent_since.setdefault(index, now) > grace_seconds:
                    raise DfdError(f"{out_dir}: part {index}/{count} is neither finished nor running; run it "
                                   f"with --part {index}/{count}, then 'dfdtrain shard --merge --out {out_dir}'")
            if progress and not announced:
                print(f"shard: waiting for part(s) {name_some([str(i) for i in missing])} of {count} to finish",
                      file=sys.stderr)
                announced = True
        else:
            return parts  # merge_parts names the problem
        time.sleep(poll_seconds)
