"""Errors that the CLI turns into one clear line (and a non-zero exit)."""


def printable(text):
    """``text`` with control and other non-printable characters escaped as Python writes them (a newline in a
    file name becomes ``\\n``), so one message is always one line of a terminal or a log."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(text))


def one_line(text, limit=None):
    """``text`` (a message or an exception) as one line: every run of whitespace, newlines included, becomes one
    space; with ``limit``, cut to that many characters ending in "..." (a library's report can span pages)."""
    line = " ".join(str(text).split())
    if limit is not None and len(line) > limit:
        line = line[:limit - 3] + "..."
    return line


class DfdError(Exception):
    """A user-facing error: the message names the file or argument and the reason."""


class BadVideo(DfdError):
    """A video (or image) that cannot be used: ``reason`` is a short tag (unreadable, zero-length, undecodable,
    truncated, ...), ``detail`` the decoder's own words. Loaders skip and count such a sample."""

    def __init__(self, path, reason, detail=""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))
