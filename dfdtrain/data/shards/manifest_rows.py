"""The manifest as a shard run holds it: per row only what the plan needs, and where to read the whole row.

A row held as a dict costs ~2 KB (200 MB for 100,000 videos, in every part of a partitioned run), and even a list
of key strings ~80 bytes a row. ``ManifestRows`` keeps per row, in arrays, its key's UTF-8 bytes (end to end in one
buffer), its split, its bytes, the byte offset of its line and its place in key order (~60 bytes a row for 22-byte
keys; 8 bytes of its group's digest until the leak check), read in one streaming pass with the checks of ``load_manifest`` (same one-line errors) and the leakage check;
whole rows are read back from the file only for the shard being hashed or written (``rows``); a manifest edited
under a running shard run is one line when a row read back is not the one the pass saw there. A list of rows (tests,
the demo) is held the same way, and its rows kept as they are.
"""

import json
from array import array

import numpy as np

from dfdtrain.data.ingest.manifest import duplicate_keys_problem, manifest_lines, manifest_row_problem
from dfdtrain.data.ingest.splits import leaking_groups
from dfdtrain.core.digests import digest64
from dfdtrain.core.errors import DfdError


class ManifestRows:
    """The rows of a manifest by position (0-based, file order): ``key(position)``, ``split_of``, ``sizes`` and
    ``key_order`` (positions in key order) in memory, whole rows through ``rows``."""

    def __init__(self, source, offsets=None, rows=None):
        self.source = source  # the manifest's path as given, or "manifest" for a list of rows
        self.split_names = []
        self.split_ids = array("I")  # per row, its split's index in split_names
        # array("d"): a float holds any whole byte count below 2**53 exactly, and a hand-written float 'bytes'
        # packs as it did when the plan read rows
        self.sizes = array("d")
        self.offsets = offsets  # array("q"): where each row's line starts in the file (None for a list)
        self.key_order = None  # numpy int64: the positions sorted by key, ties in file order (``_finish``)
        self._key_bytes = bytearray()  # every key's UTF-8, end to end
        self._key_ends = array("q")  # where each key's bytes end in _key_bytes
        self._group_digests = array("Q")  # until the leak check (``_finish``)
        self._split_index = {}  # split name -> its index in split_names
        self._rows = rows  # the list of rows this holds, or None: rows are read from the file
        self._leaks = None
        self.duplicated_keys = []  # the keys on more than one row, in file order (``_finish``)

    def _add(self, row):
        split_id = self._split_index.setdefault(row["split"], len(self._split_index))
        self._key_bytes += row["key"].encode("utf-8", "surrogatepass")
        self._key_ends.append(len(self._key_bytes))
        self.split_ids.append(split_id)
        self.sizes.append(row.get("bytes") or 0)
        self._group_digests.append(digest64(json.dumps(row.get("group"))))

    def _finish(self):
        """After the last row: the split names, the leak check (then the group digests go), the key order."""
        self.split_names = list(self._split_index)
        if self._rows is None:
            self._leaks = self._leaking_groups_of_file()
        self._group_digests = None
        self.key_order, first_of_repeated = self._sort_keys()
        self.duplicated_keys = [self.key(position) for position in first_of_repeated]

    @classmethod
    def read(cls, path):
        """One streaming pass over the manifest file at ``path``; the one-line errors of ``load_manifest``."""
        manifest = cls(str(path), offsets=array("q"))
        problem = None  # the first bad row's line; raised after the pass, as load_manifest reads everything first
        for number, (offset, row) in enumerate(manifest_lines(path), 1):
            problem = problem or manifest_row_problem(path, number, row)
            if problem:
                continue
            manifest._add(row)
            manifest.offsets.append(offset)
        if not len(manifest) and problem is None:
            raise DfdError(f"{path}: manifest has no rows")
        if problem:
            raise DfdError(problem)
        manifest._finish()
        problem = duplicate_keys_problem(path, manifest.duplicated_keys)
        if problem:
            raise DfdError(problem)
        return manifest

    @classmethod
    def of(cls, rows):
        """A list of row dicts, as they are (no checks: as the plan took them before)."""
        manifest = cls("manifest", rows=rows)
        for row in rows:
            manifest._add(row)
        manifest._finish()
        return manifest

    def __len__(self):
        return len(self._key_ends)

    def key(self, position):
        start = self._key_ends[position - 1] if position else 0
        return self._key_bytes[start:self._key_ends[position]].decode("utf-8", "surrogatepass")

    def split_of(self, position):
        return self.split_names[self.split_ids[position]]

    def _sort_keys(self):
        """(the positions sorted by key, ties in file order; the first row of each key on more than one row).

        UTF-8 bytes sort as their strings do, so numpy's stable sort of the keys as fixed-width bytes gives Python's
        order without a string per row (~80 bytes each); fixed-width bytes are NUL-padded, so a key holding a NUL,
        or keys so uneven that the padded copy would be large, are sorted as strings instead. Equal keys are
        neighbours in that order, the first of them the earliest."""
        count = len(self)
        if not count:
            return np.zeros(0, dtype=np.int64), []
        width = max(1, int(np.diff(np.frombuffer(self._key_ends, dtype=np.int64), prepend=0).max()))
        if b"\0" in self._key_bytes or count * width > 8 * len(self._key_bytes) + (1 << 20):
            order = sorted(range(count), key=self.key)
            same_as_previous = np.array([self.key(order[i]) == self.key(order[i - 1]) for i in range(1, count)],
                                        dtype=bool)
            order = np.array(order, dtype=np.int64)
        else:
            fixed = np.zeros(count, dtype=f"S{width}")
            start = 0
            for position, end in enumerate(self._key_ends):
                fixed[position] = bytes(self._key_bytes[start:end])
                start = end
            order = np.argsort(fixed, kind="stable")
            fixed.sort()  # in place, as fixed[order] is (equal keys are equal bytes), without a second copy
            same_as_previous = fixed[1:] == fixed[:-1]  # [i]: the key at order[i + 1] is the one at order[i]
            del fixed
        run_starts = same_as_previous & ~np.concatenate(([False], same_as_previous[:-1]))
        return order, np.sort(order[np.flatnonzero(run_starts)]).tolist()

    def leaking_groups(self):
        """{group: sorted splits} for every group in more than one split (``splits.leaking_groups``: groups in
        first-seen order)."""
        return leaking_groups(self._rows) if self._rows is not None else self._leaks

    def _leaking_groups_of_file(self):
        """``leaking_groups`` of the file: groups compared by digest first; only the rows of a group that may leak
        are read again."""
        groups = np.frombuffer(self._group_digests, dtype=np.uint64)
        splits = np.frombuffer(self.split_ids, dtype=np.uint32)
        order = np.lexsort((splits, groups))
        groups, splits = groups[order], splits[order]
        mixed = (groups[1:] == groups[:-1]) & (splits[1:] != splits[:-1])
        suspects = set(groups[1:][mixed].tolist())
        if not suspects:
            return {}
        splits_of = {}
        for _, row in manifest_lines(self.source):
            if digest64(json.dumps(row["group"])) in suspects:
                splits_of.setdefault(row["group"], set()).add(row["split"])
        return {group: sorted(names) for group, names in splits_of.items() if len(names) > 1}

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
                if not isinstance(row, dict) or row.get("key") != self.key(position):
                    raise DfdError(f"{self.source}: changed while being sharded (line at byte {self.offsets[position]}"
                                   f" is no longer row {self.key(position)!r}); shard it again")
                found[position] = row
        return [found[position] for position in positions]
