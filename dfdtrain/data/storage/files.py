"""Shards and their companion files wherever they are, through one API: ``open_shard`` (a binary file over a
local file, an s3/http object or a ``pipe:`` command's stdout), ``object_size``, ``read_bytes`` (a small
object such as index.json, or None), ``list_sizes`` (a local folder or an s3 prefix) and ``expand_shards`` (a
glob, brace range or list -> sorted shard URLs; s3 globs are listed, an explicit object is checked to exist).
Local paths are read directly; remote ones through the S3 and HTTP modules, with their retries.
"""

import fnmatch
import io
import os
import re
from pathlib import Path

from dfdtrain.core.errors import DfdError
from dfdtrain.data.storage.http import http_object_size
from dfdtrain.data.storage.remote_file import CHUNK, RemoteFile
from dfdtrain.data.storage.s3 import check_bucket, s3_list, s3_object_size
from dfdtrain.data.storage.urls import check_url, is_remote, redact, s3_parts


def open_shard(url):
    """A binary file object over a shard: local (``open``), s3/http (``RemoteFile``, buffered; seekable) or a
    ``pipe:`` (the command's stdout; not seekable; a failing command raises when closed)."""
    url = str(url)
    if is_remote(url):
        return io.BufferedReader(RemoteFile(url), buffer_size=CHUNK)
    if url.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open(url, "rb")


def object_size(url):
    """Bytes of an object, or None when it does not exist (a permanent fault other than 'not found' raises)."""
    url = str(url)
    if url.startswith("s3://"):
        return s3_object_size(url)
    if is_remote(url):
        return http_object_size(url)
    try:
        return os.path.getsize(url)
    except OSError:
        return None


def read_bytes(url):
    """A whole (small) object, or None when it does not exist."""
    url = str(url)
    if url.startswith("pipe:"):
        raise DfdError(f"{url}: a pipe has no files beside it")
    if is_remote(url):
        if object_size(url) is None:
            return None
        with open_shard(url) as handle:
            return handle.read()
    try:
        return Path(url).read_bytes()
    except FileNotFoundError:
        return None


def list_sizes(folder):
    """{name: bytes} of the files directly in a folder (local or s3://bucket/prefix)."""
    folder = str(folder)
    if folder.startswith("s3://"):
        bucket, prefix = s3_parts(folder.rstrip("/") + "/")
        return {key[len(prefix):]: size for key, size in s3_list(f"s3://{bucket}/{prefix}").items()
                if "/" not in key[len(prefix):]}
    if is_remote(folder):
        raise DfdError(f"{redact(folder)}: an HTTP folder cannot be listed; name the shards with a brace range")
    try:
        return {entry.name: entry.stat().st_size for entry in os.scandir(folder) if entry.is_file()}
    except FileNotFoundError:
        return {}


def _glob(pattern):
    """The shards one (brace-expanded) pattern names."""
    if pattern.startswith("pipe:"):
        return [pattern]
    wildcard = any(character in pattern for character in "*?[")
    if pattern.startswith("s3://"):
        bucket, key = s3_parts(pattern)
        if not wildcard:
            if object_size(pattern) is not None:
                return [pattern]
            check_bucket(pattern)  # a wrong bucket says so, not "shard not found"
            return []
        prefix = re.split(r"[*?\[]", key, maxsplit=1)[0]
        depth = key.count("/")
        return sorted(f"s3://{bucket}/{name}" for name in s3_list(f"s3://{bucket}/{prefix}", shown=pattern)
                      if name.count("/") == depth and fnmatch.fnmatchcase(name, key))
    if is_remote(pattern):
        if wildcard:
            raise DfdError(f"{redact(pattern)}: an HTTP server cannot be listed; name the shards with a brace range "
                           "(train-{000000..000009}.tar)")
        return [pattern] if object_size(pattern) is not None else []
    import glob

    if wildcard:
        return sorted(glob.glob(pattern))
    return [pattern] if os.path.isfile(pattern) else []


def expand_shards(spec):
    """Sorted shard URLs from a glob, a brace pattern ('train-{000000..000009}.tar') or a list of them; local
    paths, s3:// (globs listed), http(s):// (brace ranges) and pipe: commands. A pattern that matches nothing,
    a missing shard, a wrong bucket: one line."""
    import webdataset as wds

    if spec is None or spec == "" or spec == []:
        raise DfdError("no shards given")
    patterns = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls = []
    for pattern in patterns:
        check_url(pattern)
        for expanded in wds.shardlists.expand_urls(str(pattern)):
            found = _glob(expanded)
            if not found and not any(character in expanded for character in "*?["):
                raise DfdError(f"{redact(expanded)}: shard not found")
            urls += found
    if not urls:
        raise DfdError(f"{redact(spec if isinstance(spec, str) else patterns[0])}: no shard matches")
    return sorted(dict.fromkeys(urls))
