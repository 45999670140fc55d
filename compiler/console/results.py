"""A device's recent results from the store ``edgewise results --sqlite|--postgres`` fills
(``compiler.fleet.results.SqliteSink``, ``compiler.fleet.postgres``): the newest first."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..fleet.postgres import DatabaseUnavailable, connection_params, driver, first_line
from ..rollout.store import is_postgres


def recent_results(db: str, device: str, limit: int = 20) -> list[dict[str, Any]]:
    """Up to ``limit`` results of ``device``, newest capture first; DatabaseUnavailable with
    one line when the store cannot be read (a SQLite file is opened read-only, never made)."""
    if is_postgres(db):
        return _postgres(db, device, limit)
    if not Path(db).is_file():
        raise DatabaseUnavailable(f"--results {db}: no such file")
    try:
        conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT json FROM results WHERE device = ? ORDER BY captured_at DESC LIMIT ?",
                (device, limit),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(f"--results {db}: {exc}") from exc
    return [_document(row[0]) for row in rows]


def _postgres(dsn: str, device: str, limit: int) -> list[dict[str, Any]]:
    psycopg = driver("--results")
    params = connection_params(psycopg, dsn, "--results")
    try:
        with psycopg.connect(**params) as conn:
            rows = conn.execute(
                "SELECT result FROM results WHERE device = %s "
                "ORDER BY captured_at DESC NULLS LAST LIMIT %s",
                (device, limit),
            ).fetchall()
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"--results: {first_line(exc)}") from exc
    return [_document(row[0]) for row in rows]


def _document(value: Any) -> dict[str, Any]:
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}
