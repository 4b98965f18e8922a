"""Shard URLs as strings: which are remote (``s3://``, ``http(s)://``) or read through this package at all (also
``pipe:``), how one is printed (``redact``: a password and every query value hidden, so a presigned URL's
signature never reaches a log), the refusal of a URL that carries a password (``check_url``), and joining and
splitting folder and name for local paths and URLs alike. Pure string work: no I/O, no client libraries.
"""

import os
import urllib.parse

from dfdtrain.core.errors import DfdError

REMOTE_SCHEMES = ("s3://", "http://", "https://")


def is_remote(url):
    return str(url).startswith(REMOTE_SCHEMES)


def is_url(url):
    """A URL dfdtrain reads through ``dfdtrain.data.storage`` (not a local path)."""
    return str(url).startswith(REMOTE_SCHEMES + ("pipe:",))


def redact(url):
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
        raise DfdError(f"{redact(url)}: a password in a URL would be saved with the run; for HTTP put it in "
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
