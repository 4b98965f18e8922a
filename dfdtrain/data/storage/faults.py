"""Faults of remote reads and writes, and the one retry loop over them. A transient fault (``TransientFault``:
a connection refused or reset, a 5xx or throttling answer, a read that stalls for ``DFDTRAIN_IO_TIMEOUT``
seconds) is asked again with exponential backoff for up to ``DFDTRAIN_IO_RETRY_SECONDS``; then, or at once for
a permanent fault, ``RemoteError``: one line naming the (redacted) URL. Each retry is counted per process by
its kind, and ``take_fault_counts`` hands the counts to the run's report.
"""

import collections
import os
import random
import time

from dfdtrain.core.errors import DfdError
from dfdtrain.data.storage.urls import redact


class RemoteError(DfdError):
    """A permanent fault, or a transient one that outlasted the retry budget: one line naming the URL."""


class TransientFault(Exception):
    """A fault worth asking again for (its ``kind`` is what gets counted)."""

    def __init__(self, kind, detail):
        super().__init__(detail)
        self.kind = kind


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
    """``action()`` retried with backoff while it raises ``TransientFault``, up to the retry budget."""
    started, attempt = time.monotonic(), 0
    while True:
        try:
            return action()
        except TransientFault as fault:
            if time.monotonic() - started > io_retry_seconds():
                raise RemoteError(f"{redact(url)}: {fault} (still failing after {io_retry_seconds():.0f} s of "
                                  "retries; DFDTRAIN_IO_RETRY_SECONDS sets how long)") from None
            _FAULTS[fault.kind] += 1
            time.sleep(_backoff(attempt))
            attempt += 1
