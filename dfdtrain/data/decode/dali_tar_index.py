"""Index files for DALI's ``fn.readers.webdataset``, written right after a shard's tar.

DALI needs one index per tar for random access and sharding; its ``wds2idx`` tool writes it with GNU tar
subprocesses. This is a small dependency-free writer of the same format (DALI itself is an optional extra
and is not imported here), computed with Python's ``tarfile``:

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]   (one line a sample)

for example ``json 22016 8 000005.json mp4 24064 40961 000005.mp4`` (webdataset.TarWriter writes a pax
header before each member, so the data starts 1024 bytes after the member's first block).

As in ``wds2idx``: only regular files count; a member's key is its name up to the first dot of the file
name (``a/b.c.mp4`` -> key ``a/b``, extension ``c.mp4``); consecutive members with the same key form one
sample; hidden files (file name starting with a dot) are skipped. Unlike ``wds2idx``, a name without any
dot is skipped (wds2idx would mangle it into a bogus sample) and a name with whitespace is refused.
"""

import os
import tarfile

from dfdtrain.core.fileio import atomic_open

INDEX_VERSION = "v1.2"


def dali_index_path(tar_path):
    """The index path beside a tar: ``shards/train-000003.tar`` -> ``shards/train-000003.idx``.

    Only a final ``.tar`` is replaced (a name without it gets ``.idx`` appended). DALI's ``wds2idx``
    default cuts at the first dot instead, which would map ``train.000.tar`` and ``train.001.tar``
    to the same ``train.idx``.
    """
    tar_path = os.fspath(tar_path)
    if tar_path.endswith(".tar"):
        return tar_path[: -len(".tar")] + ".idx"
    return tar_path + ".idx"


def _split_key_extension(member_name):
    """Split at the first dot of the file name (not of the folders), like wds2idx's ``split_name``."""
    dot = member_name.find(".", member_name.rfind("/") + 1)
    if dot < 0:
        return member_name, ""
    return member_name[:dot], member_name[dot + 1 :]


def read_index_samples(tar_path):
    """Group the tar's regular files into samples: a list of [(extension, data offset, size, name), ...]."""
    samples = []
    last_key = None
    with tarfile.open(tar_path, mode="r:") as archive:  # plain tar only: DALI reads offsets in the raw file
        for member in archive:
            # GNU tar lists regular files as "-"; wds2idx keeps only those (no folders, links, ...).
            if not member.isreg():
                continue
            key, extension = _split_key_extension(member.name)
            # A hidden file (".x" or "a/.x") has an empty key; a name without a dot has no extension that
            # the reader's ``ext=`` could ask for. Neither belongs to a sample.
            if not key or key.endswith("/") or not extension:
                continue
            if any(character.isspace() for character in member.name):
                # The index is space separated: DALI would misread such a line.
                raise ValueError(f"{tar_path}: member name {member.name!r} has whitespace; DALI's index cannot hold it")
            component = (extension, member.offset_data, member.size, member.name)
            if key != last_key:
                samples.append([component])
                last_key = key
            else:
                samples[-1].append(component)
    return samples


def write_dali_index(tar_path, index_path=None):
    """Write the DALI webdataset index of ``tar_path`` atomically; return the number of samples.

    ``index_path`` defaults to ``dali_index_path(tar_path)``. An archive without samples raises
    ValueError (DALI rejects an empty index, as wds2idx does).
    """
    if index_path is None:
        index_path = dali_index_path(tar_path)
    samples = read_index_samples(tar_path)
    if not samples:
        raise ValueError(f"{tar_path}: no samples to index (a webdataset tar needs files named <key>.<ext>)")
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for sample in samples:
        lines.append(" ".join(f"{extension} {offset} {size} {name}" for extension, offset, size, name in sample))
    # Bytes, so member names keep the exact bytes they have in the tar whatever the locale.
    with atomic_open(index_path, "wb") as handle:
        handle.write(os.fsencode("\n".join(lines) + "\n"))
    return len(samples)
