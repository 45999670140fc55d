"""Where rollouts live between runs: SQLite by default, PostgreSQL when ``--db`` is a DSN.

One table of rollouts (the spec as JSON, its state, wave, abort reason and evidence), one of
device records (one row per rollout and device, upserted), and one of leases. A lease is taken
by a single atomic upsert that only overwrites a row that is ours or expired, so two
controllers (two processes, two machines) can never both hold one; the time it is judged by is
the database's clock, not each controller's.

Both backends run the same SQL (``?`` placeholders, rewritten for psycopg); only connecting,
the clock expression and error mapping differ. A store object is safe to share between threads
of one process: every call holds its lock.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from ..errors import InputError
from ..fleet.postgres import DatabaseUnavailable, connection_params, driver, first_line
from .plan import DeviceRecord, RolloutSpec, RolloutState

if TYPE_CHECKING:
    import psycopg

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rollouts (id text PRIMARY KEY, spec text NOT NULL, "
    "state text NOT NULL, wave integer NOT NULL, reason text NOT NULL, evidence text NOT NULL, "
    "created_at double precision NOT NULL, updated_at double precision NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollout_devices (rollout text NOT NULL, device text NOT NULL, "
    "record text NOT NULL, PRIMARY KEY (rollout, device))",
    "CREATE TABLE IF NOT EXISTS rollout_leases (rollout text PRIMARY KEY, owner text NOT NULL, "
    "expires_at double precision NOT NULL)",
)
_SCHEMA_LOCK = 0x65646765726F6C6C  # "edgeroll": two controllers starting at once create it once
_STATES = frozenset(get_args(RolloutState))
_DSN_KEYWORD = re.compile(r"^\s*(host|hostaddr|dbname|user|port|service)\s*=")
_COLUMNS = "spec, state, wave, reason, evidence, updated_at"


class UnknownRollout(InputError):
    """No rollout has this id."""

    def __init__(self, rollout_id: str):
        super().__init__(
            f"no rollout {rollout_id!r} in this database; `edgewise rollout list` shows them"
        )


@dataclass(frozen=True)
class Rollout:
    spec: RolloutSpec
    state: RolloutState
    wave: int
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0


Rollouts = list[Rollout]  # an alias: inside the class, ``list`` is the method


def is_postgres(db: str) -> bool:
    """A ``postgresql://`` URL or a ``host=... dbname=...`` string; anything else is a path."""
    return db.startswith(("postgresql://", "postgres://")) or bool(_DSN_KEYWORD.match(db))


class RolloutStore:
    """The rollouts in one database. Subclasses connect and run statements; the rest is here."""

    NOW = ""  # SQL for the database's clock in seconds since 1970
    where = ""  # the database, as a message names it

    def __init__(self) -> None:
        self._lock = threading.Lock()

    # What a backend provides: one statement, autocommitted, and its rows or changed rows.
    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[tuple[Any, ...]]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._run(sql, params)[1]

    def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._run(sql, params)[0]

    def create(self, spec: RolloutSpec) -> None:
        """A new rollout, running from wave 0; InputError if the id is taken."""
        now = time.time()
        changed = self._change(
            "INSERT INTO rollouts (id, spec, state, wave, reason, evidence, created_at, "
            "updated_at) VALUES (?, ?, 'running', 0, '', '{}', ?, ?) ON CONFLICT (id) DO NOTHING",
            (spec.id, spec.model_dump_json(), spec.created_at, now),
        )
        if not changed:
            raise InputError(
                f"a rollout {spec.id!r} exists already in {self.where}; choose another --id"
            )

    def get(self, rollout_id: str) -> Rollout | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,))
        return _rollout(rows[0]) if rows else None

    def list(self) -> Rollouts:
        """Every rollout, the newest first."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM rollouts ORDER BY created_at DESC, id DESC")
        return [_rollout(row) for row in rows]

    def set_state(
        self,
        rollout_id: str,
        state: RolloutState,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
        only_from: Collection[RolloutState] = (),
    ) -> None:
        """The state, with its reason and evidence (both replaced: a resume clears a pause's).

        With ``only_from``, only if the rollout is in one of those states when the row is
        written (InputError otherwise): ``rollout abort`` must not overwrite the controller's
        ``done`` that landed after the CLI read the state."""
        if state not in _STATES:
            raise InputError(f"{state!r} is not a rollout state ({', '.join(sorted(_STATES))})")
        document = json.dumps(evidence or {}, default=str)
        guard = f" AND state IN ({', '.join('?' * len(only_from))})" if only_from else ""
        changed = self._change(
            "UPDATE rollouts SET state = ?, reason = ?, evidence = ?, updated_at = ? "
            f"WHERE id = ?{guard}",
            (state, reason, document, time.time(), rollout_id, *only_from),
        )
        if changed:
            return
        current = self.get(rollout_id)
        if current is None:
            raise UnknownRollout(rollout_id)
        raise InputError(
            f"rollout {rollout_id} is {current.state}: only a {' or '.join(only_from)} "
            f"rollout can become {state}"
        )

    def set_wave(self, rollout_id: str, wave: int) -> None:
        changed = self._change(
            "UPDATE rollouts SET wave = ?, updated_at = ? WHERE id = ?",
            (wave, time.time(), rollout_id),
        )
        if not changed:
            raise UnknownRollout(rollout_id)

    def devices(self, rollout_id: str) -> dict[str, DeviceRecord]:
        rows = self._rows(
            "SELECT record FROM rollout_devices WHERE rollout = ? ORDER BY device", (rollout_id,)
        )
        records = (DeviceRecord.model_validate_json(row[0]) for row in rows)
        return {record.device: record for record in records}

    def put_device(self, rollout_id: str, record: DeviceRecord) -> None:
        """The device's record, inserted or replaced; UnknownRollout if there is no rollout."""
        changed = self._change(
            "INSERT INTO rollout_devices (rollout, device, record) SELECT ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM rollouts WHERE id = ?) "
            "ON CONFLICT (rollout, device) DO UPDATE SET record = excluded.record",
            (rollout_id, record.device, record.model_dump_json(), rollout_id),
        )
        if not changed:
            raise UnknownRollout(rollout_id)

    def acquire(self, rollout_id: str, owner: str, ttl_s: float) -> bool:
        """The lease for ``ttl_s`` seconds: True if it was free, expired or ours (renewed).

        One statement: the row is written only where the conflict clause's WHERE holds, and the
        database serialises writers to a row, so of two callers at most one changes it."""
        changed = self._change(
            "INSERT INTO rollout_leases (rollout, owner, expires_at) "
            f"VALUES (?, ?, {self.NOW} + ?) "
            "ON CONFLICT (rollout) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at WHERE rollout_leases.owner = excluded.owner "
            f"OR rollout_leases.expires_at < {self.NOW}",
            (rollout_id, owner, float(ttl_s)),
        )
        return changed == 1

    def release(self, rollout_id: str, owner: str) -> None:
        """The lease given up, if it is ours (another owner's is left alone)."""
        self._change(
            "DELETE FROM rollout_leases WHERE rollout = ? AND owner = ?", (rollout_id, owner)
        )

    def __enter__(self) -> RolloutStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _rollout(row: tuple[Any, ...]) -> Rollout:
    spec, state, wave, reason, evidence, updated_at = row
    return Rollout(
        RolloutSpec.model_validate_json(spec),
        state,
        int(wave),
        reason,
        json.loads(evidence),
        float(updated_at),
    )


class SqliteStore(RolloutStore):
    """A SQLite file in WAL mode: readers (``rollout status``) never block the controller, and
    several processes on one machine share it (a writer waits up to 30 s for another)."""

    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: str | Path):
        super().__init__()
        self.where = str(path)
        try:
            # autocommit (isolation_level None): every statement is its own transaction
            self._db = sqlite3.connect(
                str(path), timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open rollout database {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in SCHEMA:
                self._db.execute(statement)
        except sqlite3.Error as exc:
            self._db.close()
            raise DatabaseUnavailable(
                f"{path} is not a usable rollout database: {first_line(exc)}"
            ) from exc

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[tuple[Any, ...]]]:
        try:
            cursor = self._db.execute(sql, tuple(params))
            return cursor.rowcount, cursor.fetchall()
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(
                f"rollout database {self.where} failed: {first_line(exc)}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStore(RolloutStore):
    """A PostgreSQL database (psycopg 3, autocommit): controllers on several machines share it."""

    NOW = "extract(epoch from clock_timestamp())::float8"

    def __init__(self, dsn: str):
        super().__init__()
        self._psycopg = driver("--db")
        params = connection_params(self._psycopg, dsn, "--db", ", or a SQLite file path")
        self.where = _server(params)
        try:
            self._db: psycopg.Connection[Any] = self._psycopg.connect(**params, autocommit=True)
        except self._psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"cannot connect to {self.where}: {first_line(exc)}; check --db (host, port, "
                "dbname, user, password) and that the server runs"
            ) from exc
        try:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in SCHEMA:
                    self._db.execute(statement)
        except self._psycopg.Error as exc:
            self._db.close()
            raise DatabaseUnavailable(
                f"{self.where} refused to create the rollout tables: {first_line(exc)}; grant "
                "this user CREATE on the schema"
            ) from exc

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[tuple[Any, ...]]]:
        try:
            cursor = self._db.execute(sql.replace("?", "%s"), tuple(params))
            rows = cursor.fetchall() if cursor.description is not None else []
            return cursor.rowcount, rows
        except self._psycopg.Error as exc:
            raise DatabaseUnavailable(f"{self.where} failed: {first_line(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _server(params: dict[str, Any]) -> str:
    """Where the DSN points, without its password."""
    host = params.get("host") or params.get("hostaddr") or "the local socket"
    port = params.get("port") or "5432"
    database = params.get("dbname") or params.get("user") or "of the login user"
    return f"PostgreSQL at {host}:{port} (database {database})"


def open_store(db: str) -> RolloutStore:
    """``postgresql://...`` (or ``host=... dbname=...``) -> PostgreSQL, else a SQLite file."""
    if not db.strip():
        raise InputError("--db: empty; name a SQLite file or a PostgreSQL DSN")
    return PostgresStore(db) if is_postgres(db) else SqliteStore(db)
