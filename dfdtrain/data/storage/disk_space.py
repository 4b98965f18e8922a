"""Full disks: telling a write that did not fit (no space left, or a disk quota exceeded) from other OS
errors, and the one line that says so, with the free space left and, when known, what the work still needs.
"""

import errno
import os
import shutil

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
