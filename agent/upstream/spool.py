"""The outbox, kept going when its disk is not: results the database cannot take right now.

When a write fails (``database or disk is full``, an I/O error) the result is held in memory, in
order, behind those already on disk; newer results join it there. Every second the uplink's
thread tries to write what is held; once everything is written the outbox is back to normal.
Memory is bounded (``[outbox] memory_bytes``): beyond it the oldest held results are dropped and
counted in ``dropped``, like the outbox's own cap. Entering and leaving that state is reported
(``report``: an ``outbox`` event; the log at error priority); ``fatal`` is called when no write
has succeeded for ``max_failing_s``, so that the daemon exits non-zero and systemd restarts it.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.upstream.outbox import Outbox

log = logging.getLogger(__name__)

RETRY_S = 1.0
WRITE_SLICE = 256 * 1024  # bytes of held results written per transaction when catching up
LOW_SPACE = 1024 * 1024  # free bytes under which a failure to open is the disk's, not the file's
DbErrors = (sqlite3.Error, OSError)
# Opening a WAL database on a full disk fails to size its shared-memory file, not with FULL.
_SQLITE_IOERR_SHMSIZE = 4874


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MB" if count >= 2**20 else f"{count // 1024} KB"


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL (or the WAL index that could not grow), or ENOSPC/EDQUOT."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:
        return "disk is full" in str(exc)
    return code in (sqlite3.SQLITE_FULL, _SQLITE_IOERR_SHMSIZE)


class Spool:
    """The :class:`Outbox` API (``append``, ``peek``, ``acknowledge``, ``wait_for_more``,
    ``queued``, ``dropped``, ``close``) that never raises a database error."""

    def __init__(
        self,
        open_outbox: Callable[[], Outbox],
        memory_bytes: int,
        max_failing_s: float,
        report: Callable[[dict[str, object]], None],
        fatal: Callable[[str], None],
        free_bytes: Callable[[], int] = lambda: LOW_SPACE,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``open_outbox`` failing on a full disk (its error says so, or ``free_bytes()`` is
        under 1 MiB) starts the spool in memory, and the outbox is opened when the disk allows;
        any other error it raises propagates."""
        self._open, self._memory_bytes = open_outbox, memory_bytes
        self._max_failing_s = max_failing_s
        self._report, self._fatal, self._clock = report, fatal, clock
        self._lock = threading.RLock()
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._unacked: list[tuple[int, int]] = []  # acknowledged ranges not yet deleted
        self._failing_since: float | None = None
        self._last_ok = clock()
        self._next_retry = 0.0
        self.errors = 0  # failed database operations since start
        self.error: str | None = None  # the last one, while failing
        self.held_dropped = 0
        self._gave_up = False
        self._outbox: Outbox | None = None
        try:
            self._outbox = open_outbox()
        except DbErrors as exc:
            if not (is_disk_full(exc) or free_bytes() < LOW_SPACE):
                raise
            self._failed(exc)

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    @property
    def in_memory(self) -> int:
        return len(self._held)

    def append(self, payload: bytes) -> None:
        with self._lock:
            if self._outbox is not None and not self._held:
                try:
                    self._outbox.append(payload)
                    self._last_ok = self._clock()
                    return
                except DbErrors as exc:
                    self._failed(exc)
            self._hold(payload)

    def _hold(self, payload: bytes) -> None:
        self._held.append(payload)
        self._held_bytes += len(payload)
        while self._held_bytes > self._memory_bytes and self._held:
            if not self.held_dropped:
                log.error(
                    "outbox: %s of results held in memory and the disk still fails; "
                    "dropping the oldest",
                    _size(self._memory_bytes),
                )
            self._held_bytes -= len(self._held.popleft())
            self.held_dropped += 1

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.error = f"{type(exc).__name__}: {exc}"[:256]
        self._next_retry = self._clock() + RETRY_S
        if self._failing_since is not None:
            return
        self._failing_since = self._clock()
        log.error(
            "outbox: cannot write results: %s; holding up to %s of them in memory and retrying "
            "every %.0f s",
            self.error,
            _size(self._memory_bytes),
            RETRY_S,
        )
        self._report({"type": "outbox", "state": "failing", "error": self.error})

    def retry(self) -> None:
        """Write what is held if a retry is due (called often, from the uplink's thread)."""
        if self._failing_since is None or self._clock() < self._next_retry:
            return
        with self._lock:
            try:
                self._catch_up()
            except DbErrors as exc:
                self._failed(exc)
                if not self._gave_up and self._clock() - self._last_ok >= self._max_failing_s:
                    self._gave_up = True
                    self._fatal(
                        f"outbox: no write succeeded for {self._max_failing_s:.0f} s ({self.error})"
                    )
                return
            self._recovered()

    def _catch_up(self) -> None:
        if self._outbox is None:
            self._outbox = self._open()
        while self._unacked:
            self._outbox.acknowledge(*self._unacked[0])
            self._unacked.pop(0)
        while self._held:
            batch: list[bytes] = []
            size = 0
            for payload in self._held:
                if batch and size + len(payload) > WRITE_SLICE:
                    break
                batch.append(payload)
                size += len(payload)
            self._outbox.append_many(batch)  # a slice at a time: progress on a tight disk
            self._last_ok = self._clock()
            for _ in batch:
                self._held.popleft()
            self._held_bytes -= size

    def _recovered(self) -> None:
        assert self._failing_since is not None
        failing_s = round(self._clock() - self._failing_since, 1)
        log.warning(
            "outbox: writing again after %.1f s; %d results dropped from memory meanwhile",
            failing_s,
            self.held_dropped,
        )
        self._report(
            {
                "type": "outbox",
                "state": "recovered",
                "failing_s": failing_s,
                "dropped": self.held_dropped,
            }
        )
        self._failing_since, self.error = None, None

    def peek(self, after: int, limit: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        if self._outbox is None:
            return []
        try:
            return self._outbox.peek(after, limit, max_bytes)
        except DbErrors as exc:
            with self._lock:
                self._failed(exc)
            return []

    def acknowledge(self, first: int, last: int) -> None:
        """Forget ``first..last``; if the database cannot delete them now, later (they may be
        sent again after a reconnect meanwhile: consumers drop duplicates)."""
        with self._lock:
            if self._outbox is not None and not self._unacked:
                try:
                    self._outbox.acknowledge(first, last)
                    return
                except DbErrors as exc:
                    self._failed(exc)
            self._unacked.append((first, last))

    def wait_for_more(self, after: int, timeout: float) -> bool:
        if self._outbox is None:
            threading.Event().wait(timeout)  # pacing the uplink's loop, not a synchronisation
            return False
        try:
            return self._outbox.wait_for_more(after, timeout)
        except DbErrors as exc:
            with self._lock:
                self._failed(exc)
            return False

    @property
    def queued(self) -> int:
        on_disk = self._outbox.queued if self._outbox is not None else 0
        return on_disk + len(self._held)

    @property
    def dropped(self) -> int:
        on_disk = self._outbox.dropped if self._outbox is not None else 0
        return on_disk + self.held_dropped

    def close(self) -> None:
        """A last try to write what is held, then close the database."""
        with self._lock:
            if self._failing_since is not None:
                try:
                    self._catch_up()
                except DbErrors as exc:
                    log.error("outbox: still cannot write at exit: %s", exc)
            if self._held:
                log.error("outbox: %d results held in memory are lost", len(self._held))
            if self._outbox is not None:
                self._outbox.close()
