"""What a dataset indexer hands the index stage (``Found``), and the pieces every indexer uses: the sorted walk of a
folder, sample keys that WebDataset and tar can carry, and where the splits came from.
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from array import array
from pathlib import Path

from dfdtrain.core.digests import digest64


@dataclasses.dataclass
class Found:
    """What an indexer found: entries (one per video, as ``add`` was given them), skipped (dicts with path,
    reason), where the official splits came from (official_split / random_split), the name its rows carry as
    ``dataset`` when it is not the indexer's (folder --name) and ``excluded``: videos left out on purpose, by what
    left them out (``{"compression": {"c40": 12, "raw": 12}}`` for FF++ --compression c23).

    The entries wait in a temporary file, read back in order by ``entries()``: held as dicts they cost ~0.6 KB a
    video (60 MB for 100,000); memory keeps 8 bytes of each key's digest, for ``duplicate_keys``."""

    skipped: list = dataclasses.field(default_factory=list)
    split_source: dict = None
    dataset: str = None
    excluded: dict = dataclasses.field(default_factory=dict)
    count: int = 0  # entries added

    def __post_init__(self):
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # gone when closed or collected
        self._key_digests = array("Q")

    def add(self, root, path, label, dataset, group, split=None, key_parts=None, **extra):
        """key_parts: what names the video within the dataset (default: its relative path)."""
        key_parts = key_parts or Path(path).relative_to(root).with_suffix("").parts
        entry = {"key": make_key(dataset, *key_parts),
                 "path": Path(path).relative_to(root).as_posix(), "label": int(label), "dataset": dataset,
                 "group": group, "split": split}
        entry.update({name: value for name, value in extra.items() if value is not None})
        self._spool.write(json.dumps(entry) + "\n")
        self._key_digests.append(digest64(entry["key"]))
        self.count += 1

    def skip(self, root, path, reason, detail=""):
        path = Path(path)
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        self.skipped.append({"path": shown, "reason": reason, "detail": detail})

    def entries(self):
        """The entries, in the order they were added (read from the spool: one pass at a time)."""
        self._spool.flush()
        self._spool.seek(0)
        for line in self._spool:
            yield json.loads(line)

    def duplicate_keys(self):
        """The keys more than one entry has: candidates by digest (8 bytes a key), confirmed on the keys."""
        digests = sorted(self._key_digests)
        repeated = {digest for digest, following in zip(digests, digests[1:]) if digest == following}
        del digests
        if not repeated:
            return set()
        counts = {}
        for entry in self.entries():
            if digest64(entry["key"]) in repeated:
                counts[entry["key"]] = counts.get(entry["key"], 0) + 1
        return {key for key, count in counts.items() if count > 1}

    def close(self):
        self._spool.close()


def official_split(path):
    """The official split lists were read from ``path``."""
    return {"kind": "official", "path": str(path)}


def random_split(path, reason):
    """No official split used: every group is split at random (seeded). ``path``: where the lists were looked for;
    ``reason``: why they were not used, completing "split at random by group because ..."."""
    return {"kind": "random-by-group", "path": None if path is None else str(path), "reason": reason}


def make_key(*parts):
    """A WebDataset-safe key: no dots (webdataset splits key and extension at the first dot), no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "_".join(str(part) for part in parts)).strip("-")


def safe_key(key):
    """``key`` as a tar member's key that is safe to write: unchanged when ``make_key`` leaves it as it is, else
    ``make_key(key)`` plus 8 hex digits of its sha1 (so two unsafe keys, or an unsafe and a safe one, never
    collide). A key from someone else's shard can hold ``..`` components, a leading ``/`` or control characters,
    which a tar would carry into every folder it is extracted to."""
    key = str(key)
    cleaned = make_key(key)
    if cleaned == key:
        return key
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"key-{digest}"


def is_file_or_dangling(path):
    """A file, or a symlink to nothing: is_file() alone drops the latter silently, and the index stage must name
    it as missing instead."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def walk_files(folder):
    """The files (and dangling symlinks) under ``folder`` in ``sorted(Path(folder).rglob("*"))`` order, one at a
    time: a folder's names are listed and sorted, then its sub-folders walked in that order (symlinked folders are
    not followed, unreadable ones are passed over, as rglob does). rglob holds every path it yields in a set, and
    sorting them holds them all again: ~0.8 KB a video, 80 MB for 100,000."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except (PermissionError, FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from walk_files(entry.path)
        elif entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
            yield Path(entry.path)
