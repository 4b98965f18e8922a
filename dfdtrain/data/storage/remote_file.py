"""An s3:// or http(s):// object as a seekable binary file (``RemoteFile``): one streamed request, and after a
transient fault the same request again from the byte reached (an HTTP range request), so a shard read survives
a dropped connection or a restarted server. It keeps the last bytes it read, so a short seek back (a tar
reader's end check) asks the server for nothing.
"""

import io

from dfdtrain.core.errors import DfdError
from dfdtrain.data.storage.clients import http_session, s3_client
from dfdtrain.data.storage.faults import RemoteError, TransientFault, io_timeout, retrying
from dfdtrain.data.storage.http import http_fault, http_object_size
from dfdtrain.data.storage.s3 import s3_fault, s3_object_size
from dfdtrain.data.storage.urls import redact, s3_parts

CHUNK = 1 << 20


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
            except (TransientFault, DfdError):
                self._close_stream()
                raise
            except Exception as error:  # noqa: BLE001 (sorted below into transient or permanent)
                self._close_stream()
                self._fault(error)
            if not data and self.size is not None and self.position < self.size:
                self._close_stream()  # the connection ended early: ask again from here
                raise TransientFault("connection", f"connection closed at byte {self.position} of {self.size}")
            return data

        data = retrying(self.url, read_some)
        buffer[:len(data)] = data
        self.position += len(data)
        self._tail = (self._tail + data)[-self.TAIL_BYTES:]
        return len(data)

    def _fault(self, error):
        import urllib3

        if isinstance(error, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            raise TransientFault("timeout", f"no data for {io_timeout():.0f} s")
        if isinstance(error, (urllib3.exceptions.HTTPError, OSError)):
            raise TransientFault("connection", f"connection failed ({type(error).__name__})")
        problem = s3_fault(self.url, error) if self.url.startswith("s3://") else http_fault(self.url, error)
        raise problem

    def _total_size(self):
        if self.size is None:
            self.size = s3_object_size(self.url) if self.url.startswith("s3://") else http_object_size(self.url)
            if self.size is None:
                raise RemoteError(f"{redact(self.url)}: not found")
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
                raise s3_fault(self.url, error) from None
            self.size = start + int(response["ContentLength"])
            return response["Body"]
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            response = http_session().get(self.url, stream=True, headers=headers,
                                           timeout=(min(io_timeout(), 10), io_timeout()))
        except Exception as error:  # noqa: BLE001
            raise http_fault(self.url, error) from None
        if response.status_code == 416:
            self.size = start
            return io.BytesIO()
        if response.status_code not in (200, 206):
            response.close()
            raise http_fault(self.url, status=response.status_code)
        length = int(response.headers.get("Content-Length", -1))
        stream = response.raw
        if start and response.status_code == 200:  # the server ignores ranges: skip to where we were
            skipped = 0
            while skipped < start:
                piece = stream.read(min(CHUNK, start - skipped))
                if not piece:
                    raise TransientFault("connection", "connection closed while skipping to the resume point")
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
