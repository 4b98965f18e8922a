"""A tar shard written atomically (``TarShardWriter``) and the sample keys of a tar read back (``tar_keys``).

Members get a fixed mtime and mode, so the same input gives the same bytes; the shard's sha256 is computed as it
is written, and a DALI index is written beside a finished shard that holds a sample.
"""

import hashlib
import io
import tarfile
from pathlib import Path

from dfdtrain.data.decode.dali_tar_index import dali_index_path, write_dali_index
from dfdtrain.core.fileio import atomic_open


class _HashingFile:
    """Pass writes through to a file while hashing them (the shard's sha256 without re-reading it)."""

    def __init__(self, handle):
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self):
        return self.size


class TarShardWriter:
    """One tar shard written atomically, members with a fixed mtime (same input -> same bytes).

    ``with TarShardWriter(path) as shard: shard.add(key, "mp4", data)``; afterwards ``shard.bytes`` and
    ``shard.sha256`` describe the finished file, and a DALI index sits beside it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.bytes = self.sha256 = None
        self.members = 0

    def __enter__(self):
        self._atomic = atomic_open(self.path, "wb")
        self._hashing = _HashingFile(self._atomic.__enter__())
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        return self

    def add(self, key, extension, data):
        self.members += 1
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        try:
            self._tar.addfile(info, io.BytesIO(data))
        except OSError as error:
            raise self._named(error)

    def _named(self, error):
        """An OSError of a write into the shard, with the shard's path on it (a write has no file name)."""
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(self.path)
        return error

    def __exit__(self, kind, error, traceback):
        failed = None
        try:
            self._tar.close()  # the end-of-archive blocks: a full disk can refuse them too
        except OSError as close_error:
            if kind is None:
                kind, error, traceback = type(close_error), close_error, close_error.__traceback__
                failed = close_error
        try:
            self._atomic.__exit__(kind, error, traceback)  # on an error: removes the temp file
        except OSError as exit_error:  # the flush or fsync of the last bytes
            raise self._named(exit_error)
        if failed is not None:
            raise self._named(failed)
        if kind is None:
            self.bytes, self.sha256 = self._hashing.size, self._hashing.sha256.hexdigest()
            if self.members:
                write_dali_index(self.path, dali_index_path(self.path))
            else:  # every video of the shard was skipped: DALI refuses an empty index; its loader skips the tar
                Path(dali_index_path(self.path)).unlink(missing_ok=True)
        return False


def tar_keys(path):
    """The sample keys of a tar in member order (a key is a member's name up to its first dot)."""
    keys = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:  # reads the headers only: the members' data is skipped
            key = member.name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys
