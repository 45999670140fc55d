"""The ids of commands already run, kept in SQLite for as long as each could still be valid.

A signed command is valid until its ``expires_at`` (at most a day), so a replay — the same
envelope published again by anyone who saw it — is refused by id until then, across restarts.
After that the window check refuses it anyway, and its id is forgotten.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

PURGE_EVERY = 100  # commands between two sweeps of expired ids


class SeenCommands:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()
        self._since_purge = 0

    def remember(self, command_id: str, expires_at: float, now: float) -> bool:
        """True the first time ``command_id`` is seen (it is then kept until ``expires_at``);
        False for a replay."""
        with self._lock:
            self._since_purge += 1
            if self._since_purge >= PURGE_EVERY:
                self._since_purge = 0
                self._db.execute("DELETE FROM seen WHERE expires_at < ?", (now,))
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO seen (id, expires_at) VALUES (?, ?)",
                (command_id, expires_at),
            )
            return cursor.rowcount == 1

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
