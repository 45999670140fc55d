"""Transfer progress for ``edgewise push``: chunks the broker acknowledged, and the rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

MB = 1_000_000
# A terminal redraws in place, so this only bounds the cost of drawing (a 97 MB package is
# ~760 chunks; a redraw per chunk would be wasted writes, not wrong output).
REDRAW_S = 0.1


class TransferProgress:
    """Counts acknowledged chunks and bytes; draws one line, rewritten in place, on ``stream``.

    ``stream`` is None when stderr is not a terminal: then nothing is ever drawn, so a log gets
    no progress lines at all (the caller prints one summary at the end).
    """

    def __init__(
        self,
        label: str,
        total_chunks: int,
        total_bytes: int,
        stream: TextIO | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._label, self._stream, self._clock = label, stream, clock
        self.total_chunks, self.total_bytes = total_chunks, total_bytes
        self.chunks = self.bytes = 0
        self._started = clock()
        self._drawn_at: float | None = None

    @property
    def elapsed(self) -> float:
        return max(self._clock() - self._started, 1e-9)

    @property
    def rate_mb_s(self) -> float:
        return self.bytes / MB / self.elapsed

    def chunk(self, size: int) -> None:
        """One more chunk acknowledged by the broker."""
        self.chunks += 1
        self.bytes += size
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= REDRAW_S:
            self._draw(now)

    def close(self) -> None:
        """Draw the final figures and end the line, so what follows starts on its own line."""
        if self._stream is not None and (self._drawn_at is not None or self.chunks):
            self._draw(self._clock())
            self._stream.write("\n")
            self._stream.flush()

    def summary(self) -> str:
        return (
            f"{self.chunks} chunks, {self.bytes / MB:.1f} MB in {self.elapsed:.1f} s, "
            f"{self.rate_mb_s:.1f} MB/s"
        )

    def _draw(self, now: float) -> None:
        if self._stream is None:
            return
        self._drawn_at = now
        percent = 100 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        # \r rewrites the line in place; \033[K clears what a longer earlier line left behind.
        self._stream.write(
            f"\r{self._label}: chunk {self.chunks}/{self.total_chunks} ({percent:.0f}%), "
            f"{self.bytes / MB:.1f}/{self.total_bytes / MB:.1f} MB, {self.rate_mb_s:.1f} MB/s"
            "\033[K"
        )
        self._stream.flush()
