"""Do two sets of shards share videos or leakage groups? A test set against the data a detector was trained and
validated on (``dfdtrain protocol``), validation shards against training shards (``dfdtrain train``).

    found = overlap(sample_identities(test_shards), sample_identities(training_shards))
    if found:
        print(f"test set {found.describe()} with the training data")   # "shares 4 videos (e.g. ...) and 2 groups ..."

A video is its sample key (``<dataset>_<relative path>``, made by ``dfdtrain index``: the same video sharded
twice keeps it); a group is its leakage group (DFDC ``original`` cluster, FF++ source pair, Celeb-DF identity),
which splits keep whole. Both are compared: a different fake of the same source pair shares no key, but its
group, and a model that saw one has seen the faces of the other.

Where they come from: a local tar's own ``KEY.json`` samples (the manifest row: key, group, ...), read from the
tar's member headers with the video bytes skipped; a remote shard's keys from the ``index.json`` beside it
(``catalog.shard_entries``), its groups being unknown there (reading them would stream every video). A
``pipe:`` shard is never run to look: it is listed as unchecked.
"""

import dataclasses
import json
import tarfile

from dfdtrain.data import storage
from dfdtrain.data.shards.catalog import shard_entries


@dataclasses.dataclass
class Identities:
    """The videos of some shards: ``groups`` maps each key to its group (None where unknown); ``unchecked``
    names the shards whose videos could not be listed (a pipe:, a remote shard without an index.json, a local tar
    unreadable past some point: the videos before it are listed)."""

    groups: dict = dataclasses.field(default_factory=dict)
    unchecked: list = dataclasses.field(default_factory=list)

    @property
    def group_set(self):
        return {group for group in self.groups.values() if group is not None}


@dataclasses.dataclass
class Overlap:
    """What one set of shards shares with a reference set: video keys and groups (sorted)."""

    keys: list = dataclasses.field(default_factory=list)
    groups: list = dataclasses.field(default_factory=list)

    def __bool__(self):
        return bool(self.keys or self.groups)

    def describe(self):
        """'shares 4 videos (e.g. 'k') and 2 groups (e.g. 'g')' (each part only when there is one)."""
        parts = [f"{len(items)} {noun}{'' if len(items) == 1 else 's'} (e.g. {items[0]!r})"
                 for items, noun in ((self.keys, "video"), (self.groups, "group")) if items]
        return "shares " + " and ".join(parts)

    def to_json(self):
        return {"videos": len(self.keys), "groups": len(self.groups), "example_video": (self.keys or [None])[0],
                "example_group": (self.groups or [None])[0]}


def _tar_samples(path):
    """({key: group or None}, complete) of a local tar, from its ``KEY.json`` members (the videos' bytes are
    seeked over); ``complete`` is False when the tar could not be read to its end (what came before counts)."""
    samples = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if not extension or not member.isfile():
                    continue
                samples.setdefault(key, None)
                if extension == "json":
                    try:
                        meta = json.loads(tar.extractfile(member).read())
                    except ValueError:  # an unreadable sample still names its video by its key
                        continue
                    group = meta.get("group") if isinstance(meta, dict) else None
                    samples[key] = None if group is None else str(group)
    except (OSError, tarfile.TarError, EOFError):  # truncated or corrupt: evaluation accounts for it itself
        return samples, False
    return samples, True


def sample_identities(shard_paths):
    """The Identities of these shards (expanded paths or URLs)."""
    found = Identities()
    remote = [path for path in shard_paths if storage.is_remote(path)]
    entries = shard_entries(remote) if remote else {}
    for path in shard_paths:
        if str(path).startswith("pipe:"):
            found.unchecked.append(storage.redact(path))
        elif storage.is_remote(path):
            entry = entries.get(path)
            if entry is None or entry.get("keys") is None:
                found.unchecked.append(storage.redact(path))
                continue
            for key in entry["keys"]:
                found.groups.setdefault(key, None)
        else:
            samples, complete = _tar_samples(path)
            for key, group in samples.items():
                if found.groups.get(key) is None:
                    found.groups[key] = group
            if not complete:
                found.unchecked.append(str(path))
    return found


def overlap(identities, reference):
    """The Overlap of ``identities`` with ``reference`` (both Identities): shared keys, shared groups."""
    return Overlap(keys=sorted(set(identities.groups) & set(reference.groups)),
                   groups=sorted(identities.group_set & reference.group_set))
