"""What a shard folder's ``index.json`` promises about its shards, and checks of the shards against it.

This is the reader of index.json (``dfdtrain.data.shards.summary`` builds it); "index" is neither the manifest
that ``dfdtrain index`` writes (``dfdtrain.data.ingest.manifest``) nor DALI's per-tar index files
(``dfdtrain.data.decode.dali_tar_index``).

``dfdtrain shard`` (and ``embed``) write ``index.json`` beside the tars: per shard its sample count, labels, sha256
and (since issue 13) its sample keys. Readers use it for epoch sizes and class weights, to verify a shard's bytes
before reading it (``verify_shards``), and to account for every sample after an evaluation
(``reconcile``): what was scored + what was skipped must be what the index promises, and every video that is
neither is named. A wrongly typed field (``"samples": "many"``, labels other than counts of 0 and 1, keys that are
not a list of strings) is one line naming the file, the shard entry and the field (``index_problem``).
"""

import hashlib
import json
import tarfile

from dfdtrain.data import storage
from dfdtrain.core.errors import DfdError, one_line

INDEX_FILE = "index.json"


def _read_index(folder):
    """The index.json in a shard folder (local, s3:// or http(s)://), or None (a pipe: has no folder)."""
    if folder is None:
        return None
    path = storage.join(folder, INDEX_FILE)
    data = storage.read_bytes(path)
    if data is None:
        return None
    path = storage.redact(path)
    try:
        index = json.loads(data)
        if not isinstance(index, dict):
            raise TypeError(f"a JSON {type(index).__name__}, not an object")
        shards = index["shards"]
        if not isinstance(shards, list) or not all(isinstance(shard, dict) and "name" in shard for shard in shards):
            raise TypeError("its shards are not a list of {name, ...}")
    except (ValueError, KeyError, TypeError) as error:
        raise DfdError(f"{path}: not a shard index ({one_line(error, 200)})") from None
    problem = index_problem(index)
    if problem:
        raise DfdError(f"{path}: {problem}; rewrite it with 'dfdtrain shard' (or 'embed')")
    return index


def _show(value):
    return one_line(repr(value), 60)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def entry_problem(entry):
    """What makes one ``shards`` entry of index.json unusable, naming the field and its value; None when it is
    fine. Readers rely on these fields (sample counts, label counts, sha256, keys), so a wrongly typed one is a
    one-line error instead of a traceback deep in a loader or an evaluation."""
    if not isinstance(entry, dict):
        return f"is {_show(entry)}, not an object"
    name = entry.get("name")
    if not isinstance(name, str) or not name or name.endswith("/"):
        return f"field name is {_show(name)}, not a shard file name"
    if not _is_count(entry.get("samples")):
        return f"field samples is {_show(entry.get('samples'))}, not a count of samples"
    labels = entry.get("labels", {})
    if not isinstance(labels, dict):
        return f"field labels is {_show(labels)}, not an object of label counts"
    for label, count in labels.items():
        if label not in ("0", "1") or not _is_count(count):
            return f"field labels has {_show(label)}: {_show(count)}, not a count of label 0 or 1"
    for field in ("bytes",):
        if entry.get(field) is not None and not _is_count(entry[field]):
            return f"field {field} is {_show(entry[field])}, not a count"
    for field in ("sha256", "split", "dali_index", "plan_hash"):
        if entry.get(field) is not None and not isinstance(entry[field], str):
            return f"field {field} is {_show(entry[field])}, not a string"
    keys = entry.get("keys")
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(key, str) for key in keys)):
        return f"field keys is {_show(keys)}, not a list of sample keys"
    return None


def index_problem(index):
    """What makes an index.json (a dict with a ``shards`` list) unusable, naming the field; None when fine."""
    if index.get("manifest") is not None and not isinstance(index["manifest"], str):
        return f"field manifest is {_show(index['manifest'])}, not a path"
    for number, entry in enumerate(index["shards"]):
        problem = entry_problem(entry)
        if problem:
            name = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None
            return f"shards[{number}]" + (f" ({name})" if name else "") + f": {problem}"
    return None


def shard_entries(shard_paths):
    """{shard path: its entry in the index.json beside it (samples, labels, sha256, keys...) or None}."""
    entries, indexes = {}, {}
    for path in shard_paths:
        folder, name = storage.split(path)
        if folder not in indexes:
            index = _read_index(folder)
            indexes[folder] = {shard["name"]: shard for shard in index["shards"]} if index else {}
        entries[path] = indexes[folder].get(name)
    return entries


def count_samples(shard_paths):
    """Samples in these shards, from the index.json beside them (or by listing the tars)."""
    total = 0
    for path, entry in shard_entries(shard_paths).items():
        if entry is not None:
            total += entry["samples"]
        else:
            with storage.open_shard(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
                total += sum(1 for member in tar if member.name.endswith(".json"))
    return total


def label_counts(shard_paths):
    """{label: count} over these shards from index.json (for class weights and balancing)."""
    counts = {0: 0, 1: 0}
    for path, entry in shard_entries(shard_paths).items():
        if entry is None:
            folder, name = storage.split(path)
            where = storage.redact(storage.join(folder, INDEX_FILE)) if folder is not None else f"an {INDEX_FILE}"
            raise DfdError(f"{where}: needed for label counts of {storage.redact(name)} (written by 'dfdtrain shard')")
        for label, count in entry["labels"].items():
            counts[int(label)] += count
    return counts


def positive_class_weight(shard_paths):
    """BCE pos_weight = real count / fake count (Celeb-DF and DFDC are far from balanced)."""
    counts = label_counts(shard_paths)
    if not counts[1]:
        raise DfdError("no fake samples in these shards: cannot weight the classes")
    return counts[0] / counts[1]


def file_sha256(path, chunk_bytes=1 << 22):
    digest = hashlib.sha256()
    with storage.open_shard(path) as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shards(shard_paths):
    """Check each shard's bytes against the sha256 its index.json records; one DfdError line for the first shard
    that differs. Returns the number of shards checked (shards without a recorded sha256 cannot be)."""
    checked = 0
    for path, entry in shard_entries(shard_paths).items():
        expected = (entry or {}).get("sha256")
        if not expected:
            continue
        actual = file_sha256(path)
        if actual != expected:
            raise DfdError(f"{storage.redact(path)}: sha256 {actual[:12]}... differs from {expected[:12]}... in its index.json: "
                           "the shard is corrupt or was rewritten (re-run dfdtrain shard, or pass "
                           "--no-verify-shards to score what it still holds)")
        checked += 1
    return checked


def reconcile(shard_paths, scored, skipped):
    """Account for every sample the index promises: ``scored`` ({key, shard} of each video scored) and ``skipped``
    (skip records {key, reason, detail, shard}) against each shard's index.json entry.

    Returns {promised, scored, skipped (videos), missing, unreadable_shards, missing_samples, unindexed}:
    ``missing_samples`` names each video
    that was neither scored nor skipped ({key, shard, reason: "missing", detail}); with an older index (counts
    only, no keys) an entry per short shard gives the shard and the count instead (key None). ``unindexed``: the
    shards index.json does not describe, which cannot be checked.
    """
    seen = {}  # shard -> keys that came out of it, scored or skipped
    for item in [*scored, *skipped]:
        if item.get("key"):
            seen.setdefault(item.get("shard"), set()).add(item["key"])
    stopped = {item.get("shard"): item for item in skipped if item.get("reason") == "unreadable-shard"}
    promised, missing, unindexed = 0, [], []
    for path, entry in shard_entries(shard_paths).items():
        if entry is None:
            unindexed.append(path)
            continue
        promised += entry["samples"]
        came = seen.get(path, set())
        why = (f"never read: the shard could not be read past byte {stopped[path]['offset']}" if path in stopped
               else f"never read: promised by {INDEX_FILE} but not found in the shard")
        if entry.get("keys") is not None:
            missing += [{"key": key, "shard": path, "reason": "missing", "detail": why}
                        for key in entry["keys"] if key not in came]
        elif entry["samples"] > len(came):
            count = entry["samples"] - len(came)
            missing.append({"key": None, "shard": path, "reason": "missing", "count": count,
                            "detail": f"{why}; {count} sample(s) ({INDEX_FILE} lists no keys to name them)"})
    return {"promised": promised, "scored": len(scored), "skipped": sum(1 for item in skipped if item.get("key")),
            "missing": sum(item.get("count", 1) for item in missing), "unreadable_shards": len(stopped),
            "missing_samples": missing, "unindexed": unindexed}


def folder_indexes(shard_paths):
    """{folder: its index.json or None} of the folders holding these shards."""
    folders = {storage.split(path)[0] for path in shard_paths}
    return {folder: _read_index(folder) for folder in folders}


def _test_split_of_manifests(indexes, keys):
    """({test key}, {test group}, {key: group} of ``keys``) over the manifests (index files) these shard indexes
    were written from, where still readable here. Read a row at a time, keeping only the test split and the
    groups of ``keys``: a 100,000-video manifest held whole would be ~200 MB."""
    from dfdtrain.data.ingest.manifest import manifest_lines, manifest_row_problem  # here: PyAV (see above)

    test_keys, test_groups, group_of = set(), set(), {}
    manifests = {index.get("manifest") for index in indexes.values() if index and index.get("manifest")}
    for manifest in sorted(manifests):
        found_keys, found_groups, found_group_of = set(), set(), {}
        try:
            for number, (_, row) in enumerate(manifest_lines(manifest), 1):
                problem = manifest_row_problem(manifest, number, row)
                if problem:
                    raise DfdError(problem)
                if row["key"] in keys:
                    found_group_of[row["key"]] = str(row["group"])
                if row["split"] == "test":
                    found_keys.add(row["key"])
                    found_groups.add(str(row["group"]))
        except (DfdError, OSError, ValueError):
            continue  # moved, another machine's path or unreadable: the shards' own split names still count
        test_keys |= found_keys
        test_groups |= found_groups
        group_of.update(found_group_of)
    return test_keys, test_groups, group_of


def test_split_overlap(shard_paths, reference_paths=()):
    """Why ``shard_paths`` (validation or calibration data) must not select a model, or None: a shard of a test
    split (its index.json says so), or videos whose key or group is in the test split of an index (manifest)
    that these shards or ``reference_paths`` (the training shards) were written from."""
    entries = shard_entries(shard_paths)
    for path, entry in entries.items():
        if entry and entry.get("split") == "test":
            return f"{storage.redact(path)} is a test-split shard (its index.json says split test)"
    keys = {key for entry in entries.values() if entry for key in entry.get("keys", [])}
    test_keys, test_groups, group_of = _test_split_of_manifests(folder_indexes([*shard_paths, *reference_paths]), keys)
    shared_keys = sorted(keys & test_keys)
    if shared_keys:
        return (f"{len(shared_keys)} of its videos are in a test split of the same index (e.g. {shared_keys[0]!r})")
    shared_groups = sorted({group_of[key] for key in keys if key in group_of} & test_groups)
    if shared_groups:
        return (f"{len(shared_groups)} of its groups (identities / source pairs) are in a test split of the same "
                f"index (e.g. {shared_groups[0]!r})")
    return None
