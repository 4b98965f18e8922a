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
prints goes through ``redact`` (query values hidden: a presigned URL's signature).

The modules, lowest first: ``urls`` (parsing, ``redact``, ``check_url``), ``faults`` (``RemoteError``, the
retry loop and its counts), ``clients`` (the per-process S3 client and HTTP session), ``s3`` and ``http``
(their faults and object operations), ``remote_file`` (``RemoteFile``), ``files`` (the one API over local and
remote), ``cache`` (``local_copies``) and ``disk_space`` (full disks). This package re-exports their public API.
"""

from dfdtrain.data.storage.cache import cache_root, default_cache_dir, local_copies
from dfdtrain.data.storage.disk_space import free_bytes, is_no_space, megabytes, no_space_line
from dfdtrain.data.storage.faults import RemoteError, io_retry_seconds, io_timeout, retrying, take_fault_counts
from dfdtrain.data.storage.files import expand_shards, list_sizes, object_size, open_shard, read_bytes
from dfdtrain.data.storage.remote_file import RemoteFile
from dfdtrain.data.storage.s3 import check_bucket, delete, upload
from dfdtrain.data.storage.urls import REMOTE_SCHEMES, check_url, is_remote, is_url, join, redact, s3_parts, split

__all__ = [
    # URLs
    "REMOTE_SCHEMES", "is_remote", "is_url", "redact", "check_url", "join", "split", "s3_parts",
    # faults and retries
    "RemoteError", "io_timeout", "io_retry_seconds", "retrying", "take_fault_counts",
    # reading and listing, local or remote
    "RemoteFile", "open_shard", "object_size", "read_bytes", "list_sizes", "expand_shards",
    # writing to s3
    "upload", "delete", "check_bucket",
    # the local cache of remote shards
    "cache_root", "default_cache_dir", "local_copies",
    # full disks
    "is_no_space", "free_bytes", "no_space_line", "megabytes",
]
