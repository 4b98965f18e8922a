"""The manifest as a shard run holds it: per row only what the plan needs, and where to read the whole row.

A row held as a dict costs ~2 KB (200 MB for 100,000 videos, in every part of a partitioned run). ``ManifestRows``
keeps per row its key, split and bytes and the byte offset of its line (~100 bytes), read in one streaming pass
with the checks of ``load_manifest`` (same one-line errors) and the leakage check; whole rows are read back from
the file only for the shard being hashed or written (``rows``); a manifest edited under a running shard run is
one line when a row read back is not the one the pass saw there. A list of rows (tests, the demo) is wrapped in
the same interface, unchecked as before.
"""

import json
from array import array

from dfdtrain.data.ingest.manifest import duplicate_keys_problem, manifest_lines, manifest_row_problem
from dfdtrain.data.ingest.splits import leaking_groups
from dfdtrain.core.errors import DfdError


class ManifestRows:
    """The rows of a manifest by position (0-based, file order): ``keys``, ``split_of``, ``sizes`` in memory,
    whole rows through ``rows``."""

    def __init__(self, source, keys, split_ids, split_names, sizes, offsets=None, rows=None, leaks=None):
        self.source = source  # the manifest's path as given, or "manifest" for a list of rows
        self.keys = keys  # [key], a plain list: the plan sorts by it
        self.split_ids = split_ids  # array: per row, its split's index in split_names
        self.split_names = split_names
        # array("d"): a float holds any whole byte count below 2**53 exactly, and a hand-written float 'bytes'
        # packs as it did when the plan read rows
        self.sizes = sizes
        self.offsets = offsets  # array("q"): where each row's line starts in the file (None for a list)
        self._rows = rows  # the list of rows this wraps, or None: rows are read from the file
        self._leaks = leaks

    @classmethod
    def read(cls, path):
        """One streaming pass over the manifest file at ``path``; the one-line errors of ``load_manifest``."""
        keys, split_ids, sizes, offsets = [], array("I"), array("d"), array("q")
        split_index = {}  # split name -> its index in split_names
        # group -> a bit per split it is in: an int is ~200 bytes smaller than a set, per group
        splits_of_group = {}
        problem = None  # the first bad row's line; raised after the pass, as load_manifest reads everything first
        for number, (offset, row) in enumerate(manifest_lines(path), 1):
            problem = problem or manifest_row_problem(path, number, row)
            if problem:
                continue
            split_id = split_index.setdefault(row["split"], len(split_index))
            keys.append(row["key"])
            split_ids.append(split_id)
            sizes.append(row.get("bytes") or 0)
            offsets.append(offset)
            splits_of_group[row["group"]] = splits_of_group.get(row["group"], 0) | (1 << split_id)
        if not keys and problem is None:
            raise DfdError(f"{path}: manifest has no rows")
        problem = problem or duplicate_keys_problem(path, keys)
        if problem:
            raise DfdError(problem)
        split_names = list(split_index)
        # as splits.leaking_groups: groups in first-seen order, each with its splits sorted
        leaks = {group: sorted(name for index, name in enumerate(split_names) if bits >> index & 1)
                 for group, bits in splits_of_group.items() if bits & (bits - 1)}
        return cls(str(path), keys, split_ids, split_names, sizes, offsets=offsets, leaks=leaks)

    @classmethod
    def of(cls, rows):
        """A list of row dicts, as they are (no checks: as the plan took them before)."""
        split_index = {}
        split_ids = array("I", (split_index.setdefault(row["split"], len(split_index)) for row in rows))
        return cls("manifest", [row["key"] for row in rows], split_ids, list(split_index),
                   array("d", (row.get("bytes") or 0 for row in rows)), rows=rows)

    def __len__(self):
        return len(self.keys)

    def split_of(self, position):
        return self.split_names[self.split_ids[position]]

    def leaking_groups(self):
        """{group: sorted splits} for every group in more than one split (``splits.leaking_groups``)."""
        return leaking_groups(self._rows) if self._rows is not None else self._leaks

    def rows(self, positions):
        """The whole rows at ``positions``, in that order: read from the file now (held by the caller only)."""
        if self._rows is not None:
            return [self._rows[position] for position in positions]
        found = {}
        with open(self.source, "rb") as handle:
            for position in sorted(positions):  # in file order: one forward sweep
                handle.seek(self.offsets[position])
                line = handle.readline()
                try:
                    row = json.loads(line.decode("utf-8"))
                except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
                    row = None
                if not isinstance(row, dict) or row.get("key") != self.keys[position]:
                    raise DfdError(f"{self.source}: changed while being sharded (line at byte {self.offsets[position]}"
                                   f" is no longer row {self.keys[position]!r}); shard it again")
                found[position] = row
        return [found[position] for position in positions]
