"""HTTP(S) objects (read only): requests' exceptions and status codes sorted into transient faults (asked again:
a 5xx, 429, a timeout, a dropped connection) and permanent ones (``RemoteError``), and an object's size
(HEAD, or the first byte where a server allows no HEAD). Credentials, if any, come from ``~/.netrc``.
"""

from dfdtrain.core.errors import one_line
from dfdtrain.data.storage.clients import http_session
from dfdtrain.data.storage.faults import RemoteError, TransientFault, io_timeout, retrying
from dfdtrain.data.storage.urls import redact


def http_fault(url, error=None, status=None):
    """A requests exception or an HTTP status as TransientFault (raised) or RemoteError (returned, for the caller
    to raise)."""
    import requests

    if status is not None:
        if status >= 500 or status == 429:
            raise TransientFault(f"http {status}", f"HTTP {status}")
        return RemoteError(f"{redact(url)}: HTTP {status}")
    if isinstance(error, (requests.exceptions.ReadTimeout, TimeoutError)):
        raise TransientFault("timeout", f"no data for {io_timeout():.0f} s")
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                          ConnectionError, OSError)):
        raise TransientFault("connection", f"connection failed ({type(error).__name__})")
    return RemoteError(f"{redact(url)}: {type(error).__name__}: {one_line(error)}")


def http_object_size(url):
    """Bytes of an http(s):// object, or None when it does not exist (404, 410); another refusal raises."""
    def head():
        try:
            response = http_session().head(url, allow_redirects=True, timeout=(min(io_timeout(), 10), io_timeout()))
        except Exception as error:  # noqa: BLE001
            raise http_fault(url, error) from None
        if response.status_code in (404, 410):
            return None
        if response.status_code == 405:  # no HEAD here: ask for the first byte
            response = http_session().get(url, headers={"Range": "bytes=0-0"}, stream=True,
                                          timeout=(min(io_timeout(), 10), io_timeout()))
            response.close()
            if response.status_code in (404, 410):
                return None
        if response.status_code >= 400:
            raise http_fault(url, status=response.status_code)
        return int(response.headers.get("Content-Length", 0))
    return retrying(url, head)
