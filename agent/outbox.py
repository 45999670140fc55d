"""Results on disk until the broker has them: a bounded SQLite (WAL) queue.

A result is appended before anything tries to send it, and deleted only when the broker has
acknowledged the message carrying it (QoS 1 PUBACK) — never when it is merely handed to paho,
whose queue lives in memory. After a reconnect, a restart or ``kill -9`` whatever is left is sent
again, oldest first; consumers drop the duplicates by result id. When the queue is full the
oldest results are dropped and counted, never silently.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('dropped', 0);
"""


class Outbox:
    """Thread-safe; one connection, serialised by a lock (SQLite writes serialise anyway)."""

    def __init__(self, path: Path, max_rows: int = 100_000, max_bytes: int = 64 * 2**20):
        self.path, self.max_rows, self.max_bytes = Path(path), max_rows, max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL + synchronous=NORMAL: a commit survives the process dying (kill -9) at once and a
        # power cut from the next checkpoint; a full fsync per result would cost milliseconds.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._rows = self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        # Summed once at open rather than kept in a row: one statement per append is what keeps
        # the write cost in tens of microseconds.
        self._bytes = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM results"
        ).fetchone()[0]
        self.dropped = self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0]
        self._changed = threading.Condition(self._lock)

    def append(self, payload: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT INTO results (payload) VALUES (?)", (payload,))
            self._rows += 1
            self._bytes += len(payload)
            if self._rows > self.max_rows or self._bytes > self.max_bytes:
                self._db.execute("BEGIN")
                self._drop_oldest()
                self._db.execute("COMMIT")
            self._changed.notify_all()

    def _drop_oldest(self) -> None:
        # Make room for about a tenth more, so a full queue does not pay this on every append.
        target_rows = min(self._rows, int(self.max_rows * 0.9))
        target_bytes = int(self.max_bytes * 0.9)
        rows = self._db.execute(
            "SELECT seq, LENGTH(payload) FROM results ORDER BY seq LIMIT ?",
            (max(1, self._rows - target_rows),),
        ).fetchall()
        dropped_bytes, last = 0, None
        for count, (seq, size) in enumerate(rows, 1):
            dropped_bytes, last = dropped_bytes + size, seq
            if self._rows - count <= target_rows and self._bytes - dropped_bytes <= target_bytes:
                rows = rows[:count]
                break
        self._db.execute("DELETE FROM results WHERE seq <= ?", (last,))
        self._rows -= len(rows)
        self._bytes -= dropped_bytes
        self.dropped += len(rows)
        self._db.execute("UPDATE meta SET value=? WHERE key='dropped'", (self.dropped,))

    def peek(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` oldest results with seq > ``after``."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, payload FROM results WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()

    def acknowledge(self, first: int, last: int) -> None:
        """The broker has the results ``first..last``: forget them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM results "
                "WHERE seq BETWEEN ? AND ?",
                (first, last),
            ).fetchone()
            self._db.execute("DELETE FROM results WHERE seq BETWEEN ? AND ?", (first, last))
            self._rows -= rows[0]
            self._bytes -= rows[1]

    def wait_for_more(self, after: int, timeout: float) -> bool:
        """Block until a result newer than ``after`` exists (or ``timeout``)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._last_seq() > after, timeout)

    def _last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM results").fetchone()
        return row[0] or 0

    @property
    def queued(self) -> int:
        with self._lock:
            return self._rows

    def close(self) -> None:
        with self._lock:
            self._db.close()
