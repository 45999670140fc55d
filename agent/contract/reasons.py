"""Reasons built from untrusted input: short, one line, plain ASCII, and never the payload.

A rejection travels in an event and in the retained status. Quoting what was received would let
one message amplify itself (a 1 MB payload came back as a 1 MB event and a 1 MB status), so a
payload is only ever described by its size and the start of its sha256.
"""

from __future__ import annotations

import hashlib
import re

MAX_REASON = 256
_ELLIPSIS = "..."
# Control characters, and anything outside ASCII: one char of it can become six in JSON
# (\uXXXX), and a lone surrogate breaks a UTF-8 log line.
_NOT_PLAIN = re.compile(r"[^\x20-\x7e]")
_SPACES = re.compile(r"\s{2,}")


def clip(text: object, limit: int = MAX_REASON) -> str:
    """``text`` as one line of at most ``limit`` printable ASCII characters."""
    flat = _NOT_PLAIN.sub("?", str(text).replace("\n", " ").replace("\t", " "))
    flat = _SPACES.sub(" ", flat).strip()
    if len(flat) <= limit:
        return flat
    return flat[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def summarise(payload: bytes) -> str:
    """What a reason says about a payload instead of quoting it."""
    return f"{len(payload)} bytes, sha256 {hashlib.sha256(payload).hexdigest()[:12]}"
