"""What every chunk transport shares: the partial file on disk (resume, verify, write at the
chunk's offset), the counts a download reports, and the checks that end one (stop, a newer
announcement, no chunk for ``fetch_timeout``).

The file grows only as chunks arrive — each is written at its offset, nothing is preallocated —
so a manifest that claims 500 MB costs disk only for what was received.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.comms.guard import Oversize
from agent.contract import BlobSpec
from agent.delivery.outcomes import Interrupted, Superseded
from agent.errors import DeployError

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)
Cancelled = Callable[[], bool]  # True once the download is no longer wanted
POLL_S = 0.2


def chunks_on_disk(path: Path, blob: BlobSpec) -> set[int]:
    """Indices of chunks already written (and intact) in a partial file."""
    if not path.exists() or path.stat().st_size > blob.size:
        return set()
    done = set()
    with open(path, "rb") as fh:
        for index, expected in enumerate(blob.chunks):
            data = fh.read(blob.chunk_size)
            if not data:
                break
            if hashlib.sha256(data).hexdigest() == expected:
                done.add(index)
    return done


@dataclass
class FetchStats:
    fetched: int = 0  # chunks received and written
    resumed: int = 0  # chunks found intact on disk from an earlier attempt
    duplicates: int = 0  # chunks received again after they were written (should stay 0)


def chunk_length(blob: BlobSpec, index: int) -> int:
    """The size of chunk ``index`` (the last one may be short)."""
    return min(blob.chunk_size, blob.size - index * blob.chunk_size)


def verified(blob: BlobSpec, index: int, payload: bytes | Oversize) -> tuple[bytes | None, str]:
    """(the chunk, "") when it can be written, else (None, what is wrong with it)."""
    if isinstance(payload, Oversize):
        return None, f"is larger than the chunk size ({payload.size} > {blob.chunk_size} bytes)"
    if hashlib.sha256(payload).hexdigest() != blob.chunks[index]:
        return None, "failed its sha256 check"
    return payload, ""


class ChunkFile:
    """The partial file of one blob, open for writing chunks at their offsets."""

    def __init__(self, path: Path, blob: BlobSpec, stats: FetchStats, progress: Progress):
        self._blob, self._stats, self._progress = blob, stats, progress
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def write(self, index: int, chunk: bytes) -> None:
        """Write a verified chunk and count it."""
        os.pwrite(self._fd, chunk, index * self._blob.chunk_size)
        self._stats.fetched += 1
        total = len(self._blob.chunks)
        self._progress(self._stats.fetched + self._stats.resumed, total)

    def close(self, *, sync: bool) -> None:
        try:
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)


class Watch:
    """Ends a download: Interrupted once ``stop`` is set, Superseded once ``cancelled()``,
    DeployError after ``idle_timeout`` seconds without a new chunk."""

    def __init__(self, idle_timeout: float, stop: threading.Event, cancelled: Cancelled):
        self.idle_timeout, self.stop, self._cancelled = idle_timeout, stop, cancelled
        self._last = time.monotonic()

    def progressed(self) -> None:
        self._last = time.monotonic()

    def check_wanted(self) -> None:
        """Interrupted once stopping, Superseded once a newer announcement came."""
        if self.stop.is_set():
            raise Interrupted("stopped while fetching")
        if self._cancelled():
            raise Superseded("a newer announcement arrived")

    def check(self, missing: int, total: int) -> None:
        self.check_wanted()
        if time.monotonic() - self._last > self.idle_timeout:
            raise DeployError(
                f"no chunk for {self.idle_timeout:.0f} s: {missing} of {total} chunks missing"
            )
