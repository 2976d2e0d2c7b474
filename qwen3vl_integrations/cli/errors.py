"""User-facing errors of ``qwen3vl-search``: :class:`CLIError` and the one-line descriptions of exceptions."""
from __future__ import annotations

import re


class CLIError(Exception):
    """A user-facing error: printed as one line (no traceback), exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _one_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip().splitlines()
    first = text[0] if text else ""
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _cause(err: BaseException) -> str:
    """The reason an input was rejected, without the core's position prefix (e.g. "image 0: ")."""
    cause = str(getattr(err, "cause", None) or err)
    return re.sub(r"^(?:image|video|text|frame) \d+: ", "", cause)
