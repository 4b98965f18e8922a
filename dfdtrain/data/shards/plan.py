"""The shard plan: which video goes into which shard, and the digest a re-run compares.

``plan_shards`` depends only on the manifest rows, the seed and the target size: per split, the rows in a seeded
random order, packed into shards of up to ``target_bytes`` of source video and named ``<split>-NNNNNN.tar``. A
shard's ``plan_hash`` (its rows and the run's options) is what a later run compares with the shard's record to
keep the shard as it is or write it again.
"""

import collections
import hashlib
import json
import random

from dfdtrain.data.ingest.splits import SPLITS

DEFAULT_TARGET_BYTES = 1 << 30


def plan_shards(rows, target_bytes=DEFAULT_TARGET_BYTES, seed=0):
    """[(shard name, split, rows)]: per split, rows in seeded random order, packed up to target_bytes."""
    by_split = collections.defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    ordered_splits = [split for split in SPLITS if split in by_split] + sorted(set(by_split) - set(SPLITS))
    plan = []
    for split in ordered_splits:
        members = sorted(by_split[split], key=lambda row: row["key"])
        random.Random(f"{seed}:{split}").shuffle(members)
        current, current_bytes = [], 0
        for row in members:
            size = row.get("bytes") or 0
            if current and current_bytes + size > target_bytes:
                plan.append(current)
                current, current_bytes = [], 0
            current.append(row)
            current_bytes += size
        if current:
            plan.append(current)
    numbered = collections.Counter()
    named = []
    for members in plan:
        split = members[0]["split"]
        named.append((f"{split}-{numbered[split]:06d}.tar", split, members))
        numbered[split] += 1
    return named


def plan_hash(members, options):
    text = json.dumps([[row["key"], row["root"], row["path"], row.get("bytes")] for row in members] + [options],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
