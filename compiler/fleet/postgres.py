"""``edgewise results --postgres DSN``: results into PostgreSQL, one row per id.

Rows are buffered per MQTT message and written by :meth:`PostgresSink.flush` in one transaction:
COPY into a temporary table, then ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING``, so a
batch the broker delivers again, or that another consumer already stored, adds nothing. The
consumer acknowledges a message only after that commit (with ``--client-id``).

The driver (``psycopg``, the ``postgres`` extra) is imported only here, and only when asked for.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from agent.extras import EX_UNAVAILABLE

from ..errors import CompilerError, InputError

if TYPE_CHECKING:
    import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id            text PRIMARY KEY,
    device        text,
    seq           bigint,
    model_name    text,
    model_version text,
    label         text,
    score         double precision,
    captured_at   timestamptz,
    published_at  timestamptz,
    latency_ms    double precision,
    inference_ms  double precision,
    result        jsonb NOT NULL,
    stored_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS results_device_captured_at ON results (device, captured_at);
"""
_COLUMNS = (
    "id, device, seq, model_name, model_version, label, score, captured_at, published_at, "
    "latency_ms, inference_ms, result"
)
_INCOMING = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming (id text, device text, seq bigint, "
    "model_name text, model_version text, label text, score double precision, "
    "captured_at double precision, published_at double precision, latency_ms double precision, "
    "inference_ms double precision, result jsonb) ON COMMIT DELETE ROWS"
)
# ORDER BY id: concurrent consumers take the key locks in one order, so they cannot deadlock.
_MERGE = (
    f"INSERT INTO results ({_COLUMNS}) SELECT id, device, seq, model_name, model_version, label, "
    "score, to_timestamp(captured_at), to_timestamp(published_at), latency_ms, inference_ms, "
    "result FROM incoming ORDER BY id ON CONFLICT (id) DO NOTHING"
)
_SCHEMA_LOCK = 0x6564676577697365  # "edgewise": two consumers starting at once create it once
_RETRIES = 3


class DatabaseUnavailable(CompilerError):
    """A database (PostgreSQL here, or the rollouts' SQLite file) could not be reached or
    opened, refused the login, or failed a read or a write."""


class DriverMissing(DatabaseUnavailable):
    """psycopg is not installed: the ``postgres`` extra, exit 69 as for any missing extra."""

    exit_code = EX_UNAVAILABLE


def _server(params: dict[str, Any]) -> str:
    """Where the DSN points, without its password."""
    host = params.get("host") or params.get("hostaddr") or "the local socket"
    port = params.get("port") or "5432"
    database = params.get("dbname") or params.get("user") or "of the login user"
    return f"PostgreSQL at {host}:{port} (database {database})"


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _epoch(value: Any) -> float | None:
    """Seconds since 1970 that PostgreSQL can hold as a timestamp (year < 5000)."""
    seconds = _float(value)
    return seconds if seconds is not None and 0 <= seconds < 95e9 else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value).replace("\x00", "\ufffd")


def _clean(value: Any) -> Any:
    """What JSONB cannot hold (NaN, infinities, NUL characters) made null or replaced."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _document(result: dict[str, Any]) -> str:
    try:
        text = json.dumps(result, allow_nan=False)
    except ValueError:
        return json.dumps(_clean(result))
    return json.dumps(_clean(result)) if "\\u0000" in text else text


def row(result: dict[str, Any]) -> tuple[Any, ...]:
    """One result as the row COPY writes; a field of the wrong type is stored as null (the whole
    result is kept in ``result`` either way)."""
    model, latency = _mapping(result.get("model")), _mapping(result.get("latency_ms"))
    seq = result.get("seq")
    return (
        _text(result.get("id")),
        _text(result.get("device")),
        seq if isinstance(seq, int) and not isinstance(seq, bool) and abs(seq) < 2**63 else None,
        _text(model.get("name")),
        _text(model.get("version")),
        _text(result.get("label")),
        _float(result.get("score")),
        _epoch(result.get("captured_at")),
        _epoch(result.get("published_at")),
        _float(latency.get("total")),
        _float(latency.get("inference")),
        _document(result),
    )


def driver(option: str = "--postgres") -> Any:
    """psycopg, or one line naming the extra that brings it."""
    try:
        import psycopg
    except ImportError as exc:
        raise DriverMissing(
            f"{option} needs the PostgreSQL driver psycopg: pip install 'edgewise[postgres]'"
        ) from exc
    return psycopg


def connection_params(
    psycopg: Any, dsn: str, option: str = "--postgres", besides: str = ""
) -> dict[str, Any]:
    """``dsn`` as keyword parameters, or one InputError line naming ``option`` (and
    ``besides``, what else the option takes)."""
    try:
        params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise InputError(
            f"{option}: not a PostgreSQL connection string ({first_line(exc)}); "
            f"write 'host=H port=P dbname=D user=U' or 'postgresql://U@H:P/D'{besides}"
        ) from exc
    port = str(params.get("port", "5432"))
    if not all(part.strip().isdigit() for part in port.split(",")):
        raise InputError(f"{option}: port {port!r} is not a number")
    params.setdefault("connect_timeout", 10)
    return params


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection with the schema in place, or one line saying what is wrong and what to do."""
    psycopg = driver()
    params = connection_params(psycopg, dsn)
    try:
        conn = psycopg.connect(**params)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {_server(params)}: {first_line(exc)}; check --postgres "
            "(host, port, dbname, user, password) and that the server runs"
        ) from exc
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA)
        conn.execute(_INCOMING)
        conn.commit()
    except psycopg.Error as exc:
        conn.close()
        raise DatabaseUnavailable(
            f"{_server(params)} refused to create the results table: {first_line(exc)}; "
            "grant this user CREATE on the schema, or create the table as README shows"
        ) from exc
    return conn


class PostgresSink:
    """Results into PostgreSQL; :meth:`write` buffers, :meth:`flush` commits."""

    def __init__(self, dsn: str):
        self._psycopg = driver()
        self._db = connect(dsn)
        self._rows: list[tuple[Any, ...]] = []
        self.stored = 0  # rows this consumer inserted (copies another one stored not counted)

    def write(self, result: dict[str, Any]) -> None:
        self._rows.append(row(result))

    def flush(self) -> None:
        """The buffered rows committed: after this returns, acknowledging them is safe."""
        if not self._rows:
            return
        errors = self._psycopg.errors
        for attempt in range(_RETRIES):
            try:
                self.stored += self._merge()
                break
            except (errors.DeadlockDetected, errors.SerializationFailure):
                self._db.rollback()  # another consumer's transaction won; write the rows again
                if attempt == _RETRIES - 1:
                    raise
            except self._psycopg.Error as exc:
                raise DatabaseUnavailable(
                    f"writing results to PostgreSQL failed: {first_line(exc)}; "
                    "what was not written was not acknowledged either"
                ) from exc
        self._rows.clear()

    def _merge(self) -> int:
        with self._db.cursor() as cursor:
            with cursor.copy(f"COPY incoming ({_COLUMNS}) FROM STDIN") as copy:
                for values in self._rows:
                    copy.write_row(values)
            cursor.execute(_MERGE)
            inserted = max(cursor.rowcount, 0)
        self._db.commit()
        return inserted

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()
