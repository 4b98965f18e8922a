"""Errors that the CLI turns into one clear line (and a non-zero exit)."""


class DfdError(Exception):
    """A user-facing error: the message names the file or argument and the reason."""


class BadVideo(DfdError):
    """A video (or image) that cannot be used; `reason` is one of BAD_VIDEO_REASONS."""

    def __init__(self, path, reason, detail=""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


BAD_VIDEO_REASONS = ("unreadable", "zero-length", "undecodable", "truncated")
