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
        self.append_many([payload])

    def append_many(self, payloads: list[bytes]) -> None:
        """Append in one transaction: all or, on an error (a full disk), none."""
        with self._lock:
            added = sum(len(p) for p in payloads)
            rows, size = self._rows + len(payloads), self._bytes + added
            if len(payloads) == 1 and rows <= self.max_rows and size <= self.max_bytes:
                # One statement, committed by itself: the common case, and the cheapest.
                self._db.execute("INSERT INTO results (payload) VALUES (?)", payloads)
                self._rows, self._bytes = rows, size
                self._changed.notify_all()
                return
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO results (payload) VALUES (?)", [(p,) for p in payloads]
                )
                dropped = (0, 0)
                if rows > self.max_rows or size > self.max_bytes:
                    dropped = self._drop_oldest(rows, size)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            # Counted only once committed, so a failed write leaves them true.
            self._rows, self._bytes = rows - dropped[0], size - dropped[1]
            self.dropped += dropped[0]
            self._changed.notify_all()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _drop_oldest(self, rows_now: int, bytes_now: int) -> tuple[int, int]:
        """Delete the oldest results inside the caller's transaction; (rows, bytes) deleted."""
        # Make room for about a tenth more, so a full queue does not pay this on every append.
        target_rows = min(rows_now, int(self.max_rows * 0.9))
        target_bytes = int(self.max_bytes * 0.9)
        rows = self._db.execute(
            "SELECT seq, LENGTH(payload) FROM results ORDER BY seq LIMIT ?",
            (max(1, rows_now - target_rows),),
        ).fetchall()
        dropped_bytes, last = 0, None
        for count, (seq, size) in enumerate(rows, 1):
            dropped_bytes, last = dropped_bytes + size, seq
            if rows_now - count <= target_rows and bytes_now - dropped_bytes <= target_bytes:
                rows = rows[:count]
                break
        self._db.execute("DELETE FROM results WHERE seq <= ?", (last,))
        self._db.execute("UPDATE meta SET value=? WHERE key='dropped'", (self.dropped + len(rows),))
        return len(rows), dropped_bytes

    def peek(self, after: int, limit: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """Up to ``limit`` oldest results with seq > ``after``, and no more than ``max_bytes``
        of them joined as a JSON array's items — but always the first one."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT seq, payload FROM results WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
            try:
                if max_bytes is None:
                    return cursor.fetchall()
                rows: list[tuple[int, bytes]] = []
                total = -1  # n items take n - 1 commas
                for seq, payload in cursor:  # row by row: stop reading at the cap
                    total += len(payload) + 1
                    if rows and total > max_bytes:
                        break
                    rows.append((seq, payload))
                return rows
            finally:
                cursor.close()

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
