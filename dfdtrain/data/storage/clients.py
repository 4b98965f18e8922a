"""This process's S3 client and HTTP session, made on first use and kept per process (a client does not survive
a fork: a DataLoader worker makes its own). Endpoint and credentials come from boto3's own chain and, for
HTTP, ``~/.netrc``; dfdtrain never reads them itself.
"""

import os

from dfdtrain.core.errors import DfdError
from dfdtrain.data.storage.faults import io_timeout

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


def http_session():
    pid = ("http", os.getpid())
    if pid not in _CLIENTS:
        import requests

        _CLIENTS[pid] = requests.Session()  # reads ~/.netrc for credentials by itself
    return _CLIENTS[pid]
