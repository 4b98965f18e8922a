"""Where shards live: a local path, ``s3://bucket/key`` (any S3-compatible store), ``http(s)://host/path`` (read
only) or ``pipe:COMMAND`` (read only: the command's stdout is the tar). One API for the rest of dfdtrain:

  expand_shards(spec)   a glob, brace range or list -> sorted shard URLs; s3 globs are listed, an explicit object
                        is checked to exist (a wrong bucket or a missing shard is one line before any work)
  open_shard(url)       a binary file object over the whole object (see below)
  read_bytes(url)       a small object (index.json), or None when it does not exist
  upload / delete / list_sizes   writing a shard folder to s3 (``dfdtrain shard --out s3://...``)
  local_copies(urls, cache)      remote shards (+ their DALI indexes) in a bounded local cache (the DALI reader)

Reading streams each object with one request and, on a transient fault (connection refused or reset, a 5xx or
throttling answer, a read that stalls for ``DFDTRAIN_IO_TIMEOUT`` seconds, default 30), waits with exponential
backoff and asks again from the byte it had reached (an HTTP range request), for as long as the fault lasts up
to ``DFDTRAIN_IO_RETRY_SECONDS`` (default 300: a restarted server comes back). Then, or at once on a permanent
fault (no such bucket or object, access denied, no credentials), ``RemoteError``: one line naming the URL. Each
retry is counted per process (``take_fault_counts``) for the run's report.

Endpoint and credentials come from boto3's own chain (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_PROFILE``, ``~/.aws/config`` and ``credentials``, an instance role) and, for HTTP, ``~/.netrc``. dfdtrain
never reads, prints or saves them: a URL with a password in it is refused (``check_url``), and every URL it
prints goes through ``mask`` (query values hidden: a presigned URL's signature).
"""

import collections
import errno
import fcntl
import fnmatch
import hashlib
import io
import os
import random
import re
import shutil
import time
import urllib.parse
from pathlib import Path

from dfdtrain.core.errors import DfdError

REMOTE_SCHEMES = ("s3://", "http://", "https://")
READ_ONLY_SCHEMES = ("http://", "https://", "pipe:")
TRANSIENT_S3_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                      "Throttling", "ThrottlingException", "500", "502", "503", "504"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
CHUNK = 1 << 20


class RemoteError(DfdError):
    """A permanent fault, or a transient one that outlasted the retry budget: one line naming the URL."""


class _Transient(Exception):
    """A fault worth asking again for (its ``kind`` is what gets counted)."""

    def __init__(self, kind, detail):
        super().__init__(detail)
        self.kind = kind


# ------------------------------------------------------------------------------------------- URLs
def is_remote(url):
    return str(url).startswith(REMOTE_SCHEMES)


def is_url(url):
    """A URL dfdtrain reads through this module (not a local path)."""
    return str(url).startswith(REMOTE_SCHEMES + ("pipe:",))


def mask(url):
    """``url`` as it may be printed: a password in it replaced by ``***`` and every query value by ``***``."""
    url = str(url)
    if not is_remote(url):
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    query = "&".join(f"{name}=***" for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url):
    """Refuse a URL that carries a password: it would end up in configs, logs and W&B."""
    if is_remote(url) and urllib.parse.urlsplit(str(url)).password is not None:
        raise DfdError(f"{mask(url)}: a password in a URL would be saved with the run; for HTTP put it in "
                       "~/.netrc, for S3 use the AWS variables or a profile")
    return str(url)


def join(folder, name):
    folder = str(folder)
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else os.path.join(folder, name)


def split(url):
    """(folder, name) of a shard URL or path; (None, url) for a pipe: (it has no folder to hold an index.json)."""
    url = str(url)
    if url.startswith("pipe:"):
        return None, url
    if is_remote(url):
        folder, _, name = url.rstrip("/").rpartition("/")
        return folder, name
    return os.path.dirname(url) or ".", os.path.basename(url)


def s3_parts(url):
    """(bucket, key) of an s3:// URL (key may be empty)."""
    bucket, _, key = str(url)[len("s3://"):].partition("/")
    if not bucket:
        raise DfdError(f"{url}: an s3 URL is s3://BUCKET/KEY")
    return bucket, key


# ------------------------------------------------------------------------------------- settings, counts
def io_timeout():
    return float(os.environ.get("DFDTRAIN_IO_TIMEOUT", 30))


def io_retry_seconds():
    return float(os.environ.get("DFDTRAIN_IO_RETRY_SECONDS", 300))


_FAULTS = collections.Counter()  # this process's transient faults by kind (retries), since the last take


def take_fault_counts():
    """{kind: count} of the transient faults this process retried since the last call (then reset)."""
    counts = dict(_FAULTS)
    _FAULTS.clear()
    return counts


def _backoff(attempt):
    return min(10.0, 0.25 * 2 ** attempt) * (0.5 + random.random() / 2)


def retrying(url, action):
    """``action()`` retried with backoff while it raises ``_Transient``, up to the retry budget."""
    started, attempt = time.monotonic(), 0
    while True:
        try:
            return action()
        except _Transient as fault:
            if time.monotonic() - started > io_retry_seconds():
                raise RemoteError(f"{mask(url)}: {fault} (still failing after {io_retry_seconds():.0f} s of "
                                  "retries; DFDTRAIN_IO_RETRY_SECONDS sets how long)") from None
            _FAULTS[fault.kind] += 1
            time.sleep(_backoff(attempt))
            attempt += 1


# ------------------------------------------------------------------------------------------- clients
_CLIENTS = {}


def s3_client():
    """This process's boto3 S3 client (one per process: boto3 clients do not survive a fork). Timeouts from
    DFDTRAIN_IO_TIMEOUT; botocore's own retries off (``retrying`` counts and bounds them)."""
    pid = os.getpid()
    if pid not in _CLIENTS:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise DfdError("s3:// shards need boto3: pip install boto3") from None
        _CLIENTS.clear()
        config = Config(connect_timeout=min(io_timeout(), 10), read_timeout=io_timeout(),
                        retries={"max_attempts": 1, "mode": "standard"})
        _CLIENTS[pid] = boto3.session.Session().client("s3", config=config)
    return _CLIENTS[pid]


def _http_session():
    pid = ("http", os.getpid())
    if pid not in _CLIENTS:
        import requests

        _CLIENTS[pid] = requests.Session()  # reads ~/.netrc for credentials by itself
    return _CLIENTS[pid]


def _s3_fault(url, error):
    """A botocore/urllib3 exception as _Transient (raised) or RemoteError (returned, for the caller to raise)."""
    from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, HTTPClientError,
                                     NoCredentialsError, ReadTimeoutError, ResponseStreamingError)

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in TRANSIENT_S3_CODES or (status or 0) >= 500:
            raise _Transient(f"s3 {code}", f"S3 answered {code}")
        message = error.response.get("Error", {}).get("Message") or code
        return RemoteError(f"{mask(url)}: {code}: {' '.join(str(message).split())}")
    if isinstance(error, NoCredentialsError):
        return RemoteError(f"{mask(url)}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "or AWS_PROFILE)")
    if isinstance(error, ReadTimeoutError):
        raise _Transient("timeout", f"no data for {io_timeout():.0f} s")
    # HTTPClientError: a connection closed or reset before a whole answer, a proxy or TLS failure on the way
    if isinstance(error, (BotoConnectionError, HTTPClientError, ResponseStreamingError, ConnectionError,
                          TimeoutError)):
        raise _Transient("connection", f"connection failed ({type(error).__name__})")
    return RemoteError(f"{mask(url)}: {type(error).__name__}: {' '.join(str(error).split())}")


def _http_fault(url, error=None, status=None):
    import requests

    if status is not None:
        if status >= 500 or status == 429:
            raise _Transient(f"http {status}", f"HTTP {status}")
        return RemoteError(f"{mask(url)}: HTTP {status}")
    if isinstance(error, (requests.exceptions.ReadTimeout, TimeoutError)):
        raise _Transient("timeout", f"no data for {io_timeout():.0f} s")
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                          ConnectionError, OSError)):
        raise _Transient("connection", f"connection failed ({type(error).__name__})")
    return RemoteError(f"{mask(url)}: {type(error).__name__}: {' '.join(str(error).split())}")


# ------------------------------------------------------------------------------------------- reading
class RemoteFile(io.RawIOBase):
    """An s3:// or http(s):// object as a seekable binary file, streamed, resumed after transient faults from
    the byte reached (HTTP ranges). Use through ``open_shard`` (buffered)."""

    TAIL_BYTES = 1 << 18  # kept of what was read last: a short seek back (a tar reader's end check) asks nothing

    def __init__(self, url):
        super().__init__()
        self.url, self.position, self.size, self._stream = url, 0, None, None
        self._tail = b""  # the last bytes read, ending where the stream is
        self._replay = b""  # after a seek back into the tail: bytes to give before reading the stream again

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_CUR:
            offset += self.position
        elif whence == io.SEEK_END:
            offset += self._total_size()
        offset = max(0, offset)
        stream_at = self.position + len(self._replay)  # where the open stream (and the tail) ends
        if offset != self.position:
            if self._stream is not None and stream_at - len(self._tail) <= offset <= stream_at:
                self._replay = self._tail[len(self._tail) - (stream_at - offset):]
            else:
                self._close_stream()
                self._replay = self._tail = b""
            self.position = offset
        return self.position

    def readinto(self, buffer):
        if self._replay:
            count = min(len(buffer), len(self._replay))
            buffer[:count], self._replay = self._replay[:count], self._replay[count:]
            self.position += count
            return count
        if self.size is not None and self.position >= self.size:
            return 0

        def read_some():
            try:
                if self._stream is None:
                    self._stream = self._open(self.position)
                    if self.size is not None and self.position >= self.size:
                        return b""
                data = self._stream.read(len(buffer))
            except (_Transient, DfdError):
                self._close_stream()
                raise
            except Exception as error:  # noqa: BLE001 (sorted below into transient or permanent)
                self._close_stream()
                self._fault(error)
            if not data and self.size is not None and self.position < self.size:
                self._close_stream()  # the connection ended early: ask again from here
                raise _Transient("connection", f"connection closed at byte {self.position} of {self.size}")
            return data

        data = retrying(self.url, read_some)
        buffer[:len(data)] = data
        self.position += len(data)
        self._tail = (self._tail + data)[-self.TAIL_BYTES:]
        return len(data)

    def _fault(self, error):
        import urllib3

        if isinstance(error, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            raise _Transient("timeout", f"no data for {io_timeout():.0f} s")
        if isinstance(error, (urllib3.exceptions.HTTPError, OSError)):
            raise _Transient("connection", f"connection failed ({type(error).__name__})")
        problem = _s3_fault(self.url, error) if self.url.startswith("s3://") else _http_fault(self.url, error)
        raise problem

    def _total_size(self):
        if self.size is None:
            self.size = object_size(self.url)
            if self.size is None:
                raise RemoteError(f"{mask(self.url)}: not found")
        return self.size

    def _open(self, start):
        """A stream of the object from byte ``start`` (with a read(n) method); sets ``size``."""
        if self.url.startswith("s3://"):
            bucket, key = s3_parts(self.url)
            arguments = {"Bucket": bucket, "Key": key}
            if start:
                arguments["Range"] = f"bytes={start}-"
            try:
                response = s3_client().get_object(**arguments)
            except Exception as error:  # noqa: BLE001
                from botocore.exceptions import ClientError

                if isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") == "InvalidRange":
                    self.size = start  # asked from the end: nothing more
                    return io.BytesIO()
                raise _s3_fault(self.url, error) from None
            self.size = start + int(response["ContentLength"])
            return response["Body"]
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            response = _http_session().get(self.url, stream=True, headers=headers,
                                           timeout=(min(io_timeout(), 10), io_timeout()))
        except Exception as error:  # noqa: BLE001
            raise _http_fault(self.url, error) from None
        if response.status_code == 416:
            self.size = start
            return io.BytesIO()
        if response.status_code not in (200, 206):
            response.close()
            raise _http_fault(self.url, status=response.status_code)
        length = int(response.headers.get("Content-Length", -1))
        stream = response.raw
        if start and response.status_code == 200:  # the server ignores ranges: skip to where we were
            skipped = 0
            while skipped < start:
                piece = stream.read(min(CHUNK, start - skipped))
                if not piece:
                    raise _Transient("connection", "connection closed while skipping to the resume point")
                skipped += len(piece)
            self.size = length if length >= 0 else None
        else:
            self.size = start + length if length >= 0 else None
        return stream

    def _close_stream(self):
        self._tail = self._replay = b""  # they belong to the stream
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 (a broken connection may fail to close; it is dropped either way)
                pass
            self._stream = None

    def close(self):
        self._close_stream()
        super().close()


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
        bucket, key = s3_parts(url)

        def head():
            try:
                return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
            except Exception as error:  # noqa: BLE001
                from botocore.exceptions import ClientError

                if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in NOT_FOUND_CODES:
                    return None
                raise _s3_fault(url, error) from None
        return retrying(url, head)
    if is_remote(url):
        def head():
            try:
                response = _http_session().head(url, allow_redirects=True, timeout=(min(io_timeout(), 10), io_timeout()))
            except Exception as error:  # noqa: BLE001
                raise _http_fault(url, error) from None
            if response.status_code in (404, 410):
                return None
            if response.status_code == 405:  # no HEAD here: ask for the first byte
                response = _http_session().get(url, headers={"Range": "bytes=0-0"}, stream=True,
                                               timeout=(min(io_timeout(), 10), io_timeout()))
                response.close()
                if response.status_code in (404, 410):
                    return None
            if response.status_code >= 400:
                raise _http_fault(url, status=response.status_code)
            return int(response.headers.get("Content-Length", 0))
        return retrying(url, head)
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


# ------------------------------------------------------------------------------------------- listing
def _s3_list(url, shown=None):
    """{key: size} of every object under the prefix of ``url`` (s3://bucket/prefix); errors name ``shown``."""
    bucket, prefix = s3_parts(url)
    shown = shown or url

    def listing():
        found = {}
        try:
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        except Exception as error:  # noqa: BLE001
            raise _s3_fault(shown, error) from None
        return found
    return retrying(shown, listing)


def list_sizes(folder):
    """{name: bytes} of the files directly in a folder (local or s3://bucket/prefix)."""
    folder = str(folder)
    if folder.startswith("s3://"):
        bucket, prefix = s3_parts(folder.rstrip("/") + "/")
        return {key[len(prefix):]: size for key, size in _s3_list(f"s3://{bucket}/{prefix}").items()
                if "/" not in key[len(prefix):]}
    if is_remote(folder):
        raise DfdError(f"{mask(folder)}: an HTTP folder cannot be listed; name the shards with a brace range")
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
        return sorted(f"s3://{bucket}/{name}" for name in _s3_list(f"s3://{bucket}/{prefix}", shown=pattern)
                      if name.count("/") == depth and fnmatch.fnmatchcase(name, key))
    if is_remote(pattern):
        if wildcard:
            raise DfdError(f"{mask(pattern)}: an HTTP server cannot be listed; name the shards with a brace range "
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
                raise DfdError(f"{mask(expanded)}: shard not found")
            urls += found
    if not urls:
        raise DfdError(f"{mask(spec if isinstance(spec, str) else patterns[0])}: no shard matches")
    return sorted(dict.fromkeys(urls))


# ------------------------------------------------------------------------------------------- writing
def _writable(url):
    if not str(url).startswith("s3://"):
        raise DfdError(f"{mask(url)}: only a local folder or s3://bucket/prefix can be written")


def upload(local_path, url, metadata=None):
    """Put a local file at ``url`` (s3). A reader never sees part of it: S3 shows an object only once its upload
    (a single PUT, or a multipart upload completed at the end) is whole."""
    _writable(url)
    from boto3.s3.transfer import TransferConfig

    bucket, key = s3_parts(url)
    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, use_threads=False)

    def put():
        try:
            s3_client().upload_file(os.fspath(local_path), bucket, key, Config=config,
                                    ExtraArgs={"Metadata": metadata or {}})
        except Exception as error:  # noqa: BLE001
            from boto3.exceptions import S3UploadFailedError

            # boto3 wraps the client's error in its own: sort the cause into transient or permanent
            cause = error.__context__ if isinstance(error, S3UploadFailedError) and error.__context__ else error
            raise _s3_fault(url, cause) from None
    retrying(url, put)


def delete(url):
    _writable(url)
    bucket, key = s3_parts(url)

    def remove():
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as error:  # noqa: BLE001
            raise _s3_fault(url, error) from None
    retrying(url, remove)


def check_bucket(url):
    """One line now, rather than after an hour of sharding, when the bucket is wrong or not ours."""
    bucket, _ = s3_parts(url)

    def head():
        try:
            s3_client().head_bucket(Bucket=bucket)
        except Exception as error:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                return RemoteError(f"{mask(url)}: no such bucket {bucket!r}")
            if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) == "403":
                return RemoteError(f"{mask(url)}: access denied to bucket {bucket!r}")
            raise _s3_fault(url, error) from None
        return None
    problem = retrying(url, head)
    if problem:
        raise problem


# ------------------------------------------------------------------------------------- a local cache
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
                    raise DfdError(f"{mask(url)}: shard not found")
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
                raise RemoteError(f"{mask(url)}: copied {copied} bytes, the object has {size}")
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


# ------------------------------------------------------------------------------------------- full disks
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(error):
    """True for an OSError of a full file system or an exceeded disk quota."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def free_bytes(path):
    """Free bytes on the file system holding ``path`` (its nearest existing folder), or None if unknown."""
    path = os.path.abspath(os.fspath(path))
    while True:
        try:
            return shutil.disk_usage(path).free
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


def no_space_line(path, error=None, needed=None):
    """``PATH: no space left on device (N MB free[; NEEDED])``: one line for a write that did not fit.
    ``needed``: what the work still needs, in words (e.g. "the 3 shards left need about 12 MB")."""
    free = free_bytes(path)
    what = "disk quota exceeded" if getattr(error, "errno", None) == errno.EDQUOT else "no space left on device"
    amount = "free space unknown" if free is None else f"{megabytes(free)} MB free"
    return f"{path}: {what} ({amount}" + (f"; {needed}" if needed else "") + ")"


def megabytes(count):
    """Bytes as MB (2**20) for a message: one decimal below 10 MB (a nearly full disk is not "0 MB")."""
    return f"{count / 2**20:.1f}" if count < 10 * 2**20 else f"{count / 2**20:.0f}"
