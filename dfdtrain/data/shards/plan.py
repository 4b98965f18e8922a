"""The shard plan: which video goes into which shard, and the digest a re-run compares.

``plan_shards`` depends only on the manifest rows, the seed and the target size: per split, the rows in a seeded
random order, packed into shards of up to ``target_bytes`` of source video and named ``<split>-NNNNNN.tar``. A
shard's ``plan_hash`` (its rows and the run's options) is what a later run compares with the shard's record to
keep the shard as it is or write it again.

The plan holds each shard's rows as positions in the ``ManifestRows`` (8 bytes a video); ``ShardPlan.rows`` reads a
shard's whole rows when it is hashed or written, one shard at a time.
"""

import collections
import dataclasses
import hashlib
import json
import random
from array import array

from dfdtrain.data.ingest.splits import SPLITS
from dfdtrain.data.shards.manifest_rows import ManifestRows

DEFAULT_TARGET_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan: its tar name, its split and its videos' positions in the manifest, in tar order."""

    name: str
    split: str
    positions: array


class ShardPlan:
    """A run's shards in plan order, over the manifest rows they are read from."""

    def __init__(self, manifest, shards):
        self.manifest = manifest  # ManifestRows
        self.shards = shards  # [PlannedShard]

    def __iter__(self):
        return iter(self.shards)

    def __len__(self):
        return len(self.shards)

    def __getitem__(self, number):
        return self.shards[number]

    @property
    def names(self):
        return [shard.name for shard in self.shards]

    def rows(self, shard):
        """The shard's whole manifest rows, in tar order (read from the manifest file now)."""
        return self.manifest.rows(shard.positions)

    def keys(self, shard):
        return [self.manifest.key(position) for position in shard.positions]

    def video_bytes(self, shard):
        """The source bytes of the shard's videos, as the manifest gives them."""
        return sum(self.manifest.sizes[position] for position in shard.positions)

    def only(self, names):
        """The plan of the shards named in ``names``, in plan order (a part's share)."""
        return ShardPlan(self.manifest, [shard for shard in self.shards if shard.name in names])

    def hashes(self, options):
        """{shard name: plan_hash}, in plan order: one read of the manifest, each shard's rows in turn."""
        return {shard.name: plan_hash(self.rows(shard), options) for shard in self.shards}


def plan_shards(manifest, target_bytes=DEFAULT_TARGET_BYTES, seed=0):
    """The ShardPlan of ``manifest`` (ManifestRows, or a list of rows): per split, its rows sorted by key in seeded
    random order, packed up to target_bytes."""
    if not isinstance(manifest, ManifestRows):
        manifest = ManifestRows.of(list(manifest))
    # one stable sort by key for all splits (``key_order``): each split's rows come out in key order (ties in
    # manifest order), as a sort per split orders them
    by_split = collections.defaultdict(lambda: array("q"))  # 8 bytes a row; a list of ints holds ~36
    for position in manifest.key_order:
        by_split[manifest.split_of(position)].append(position)
    ordered_splits = [split for split in SPLITS if split in by_split] + sorted(set(by_split) - set(SPLITS))
    shards, numbered = [], collections.Counter()
    for split in ordered_splits:
        members = by_split.pop(split)
        # the shuffle's swaps depend only on the length: positions land where the rows themselves did
        random.Random(f"{seed}:{split}").shuffle(members)
        current, current_bytes = [], 0
        for position in members:
            size = manifest.sizes[position]
            if current and current_bytes + size > target_bytes:
                shards.append(PlannedShard(f"{split}-{numbered[split]:06d}.tar", split, array("q", current)))
                numbered[split] += 1
                current, current_bytes = [], 0
            current.append(position)
            current_bytes += size
        if current:
            shards.append(PlannedShard(f"{split}-{numbered[split]:06d}.tar", split, array("q", current)))
            numbered[split] += 1
    return ShardPlan(manifest, shards)


def plan_hash(members, options):
    # a row's face boxes (index --face-boxes) go into its sample: other boxes rewrite the shard (a row without
    # any hashes as before they existed)
    text = json.dumps([[row["key"], row["root"], row["path"], row.get("bytes"), *([row["faces"]] if "faces" in row
                                                                                 else [])] for row in members]
                      + [options], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
