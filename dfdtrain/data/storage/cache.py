"""A bounded local cache of remote shards, for readers that want files (the DALI reader): ``local_copies``
copies each remote shard (and its DALI index) once into ``cache_dir``, checks the copy's size, and deletes
other shard sets' files, least recently used first, to stay under the budget; ranks on one node share it
under a lock file. ``cache_root`` is dfdtrain's cache folder (also used for other caches).
"""

import fcntl
import hashlib
import os
import shutil

from dfdtrain.core.errors import DfdError
from dfdtrain.data.storage.faults import RemoteError
from dfdtrain.data.storage.files import object_size, open_shard
from dfdtrain.data.storage.remote_file import CHUNK
from dfdtrain.data.storage.urls import is_remote, redact, split


def cache_root():
    """dfdtrain's local cache: $DFDTRAIN_CACHE, else $XDG_CACHE_HOME/dfdtrain or ~/.cache/dfdtrain."""
    return os.environ.get("DFDTRAIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dfdtrain")


def default_cache_dir():
    """Where remote shards are copied for readers that want files (the DALI path)."""
    return os.path.join(cache_root(), "shards")


def local_copies(urls, cache_dir, max_bytes, companions=(".idx",)):
    """Local paths of ``urls`` (remote ones copied into ``cache_dir``, each with its ``companions`` beside it,
    e.g. the DALI index), for readers that want files. Local paths pass through.

    The cache is bounded: the files of other shard sets are deleted, least recently used first, to keep it
    under ``max_bytes``; a set larger than that on its own is refused with one line. A copy whose size differs
    from the object's is fetched again. Ranks on one node share the cache (a lock file serialises them: the
    second finds the files in place).
    """
    remote = [url for url in urls if is_remote(url)]
    if not remote:
        return list(urls)
    os.makedirs(cache_dir, exist_ok=True)
    wanted = {}  # url -> (local path, size)
    for url in remote:
        folder, name = split(url)
        local_folder = os.path.join(cache_dir, hashlib.sha256(folder.encode()).hexdigest()[:16])
        for suffix in ("", *companions):
            target = url[:-len(".tar")] + suffix if suffix and url.endswith(".tar") else url + suffix
            if suffix:
                size = object_size(target)
                if size is None:
                    continue  # e.g. an empty shard has no DALI index; its reader says so
            else:
                size = object_size(url)
                if size is None:
                    raise DfdError(f"{redact(url)}: shard not found")
            wanted[target] = (os.path.join(local_folder, split(target)[1]), size)
    total = sum(size for _, size in wanted.values())
    if total > max_bytes:
        raise DfdError(f"{len(remote)} remote shard(s) hold {total / 1e9:.2f} GB, more than the local cache's "
                       f"{max_bytes / 1e9:.2f} GB (data.remote_cache_gb; at {cache_dir}): raise it, or read them "
                       "with data.decoder=pyav, which streams")
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _make_room(cache_dir, {path for path, _ in wanted.values()}, max_bytes - total)
        for url, (path, size) in wanted.items():
            if os.path.isfile(path) and os.path.getsize(path) == size:
                os.utime(path)  # recently used
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.{os.getpid()}.part"
            with open_shard(url) as source, open(temporary, "wb") as target:
                shutil.copyfileobj(source, target, CHUNK)
            copied = os.path.getsize(temporary)
            if copied != size:
                os.unlink(temporary)
                raise RemoteError(f"{redact(url)}: copied {copied} bytes, the object has {size}")
            os.replace(temporary, path)
    return [wanted[url][0] if is_remote(url) else url for url in urls]


def _make_room(cache_dir, keep, free_bytes):
    """Delete cached files not in ``keep``, least recently used first, until the rest fit in ``free_bytes``."""
    others = []
    for root, _, names in os.walk(cache_dir):
        for name in names:
            path = os.path.join(root, name)
            if path not in keep and name != ".lock":
                stat = os.stat(path)
                others.append((stat.st_mtime, stat.st_size, path))
    used = sum(size for _, size, _ in others)
    for _, size, path in sorted(others):
        if used <= free_bytes:
            break
        os.unlink(path)
        used -= size
