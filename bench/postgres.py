"""Results end to end into a database: the consumer CLI (``edgewise results --client-id``, so a
message is acknowledged only after its rows are committed) on a Mosquitto with default settings,
fed batches of agent-shaped results as fast as a QoS 1 publisher sends them, into PostgreSQL
and, in the same run, into SQLite.

    .venv/bin/python bench/postgres.py [--results N] [--batch B] [--dsn DSN]

``--dsn`` is a server's maintenance database (default: the machine's, user postgres); the bench
creates a database of its own there and drops it afterwards. Prints a table, then the figures as
one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from outbox import results as agent_results  # payloads from the agent's own ResultBuilder
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent.contract import Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

ROOT = Path(__file__).resolve().parents[1]
EDGEWISE = Path(sys.executable).with_name("edgewise")
TOPICS = Topics()


def batches(device: str, count: int, size: int) -> list[bytes]:
    """What the uplink sends: JSON arrays of results (it averaged about 90 per message)."""
    payloads = agent_results(device, count)
    return [b"[" + b",".join(payloads[i : i + size]) + b"]" for i in range(0, count, size)]


def run_consumer(broker: MosquittoBroker, sink: list[str], count: int, size: int) -> float:
    """Seconds from the first publish until the consumer exits with every row committed."""
    device = f"bench-{uuid.uuid4().hex[:6]}"
    client_id = f"bench-db-{device}"
    base = [str(EDGEWISE), "results", "--port", str(broker.port), "--client-id", client_id]
    subprocess.run([*base, "--timeout", "1"], check=True, capture_output=True)  # the session
    messages = batches(device, count, size)
    proc = subprocess.Popen(
        [*base, "--count", str(count), "--timeout", "60", *sink],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("listening on ")
    publisher = connect(BrokerAddress(broker.host, broker.port))
    started = time.perf_counter()
    infos = [publisher.publish(TOPICS.results(device), m, qos=1) for m in messages]
    for info in infos:
        info.wait_for_publish(60)
    _, err = proc.communicate(timeout=600)
    took = time.perf_counter() - started
    disconnect(publisher)
    if proc.returncode != 0:
        raise SystemExit(f"consumer failed: {err}")
    return took


def postgres_figures(
    broker: MosquittoBroker, admin: str, count: int, size: int
) -> dict[str, float]:
    name = f"edgewise_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
    try:
        took = run_consumer(broker, ["--postgres", dsn], count, size)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT count(*), count(DISTINCT id) FROM results").fetchone()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert rows is not None
    return {"rows": rows[0], "distinct": rows[1], "seconds": round(took, 3)}


def sqlite_figures(
    broker: MosquittoBroker, folder: Path, count: int, size: int
) -> dict[str, float]:
    path = folder / "results.db"
    took = run_consumer(broker, ["--sqlite", str(path)], count, size)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT count(*), count(DISTINCT id) FROM results").fetchone()
    return {"rows": rows[0], "distinct": rows[1], "seconds": round(took, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    args = parser.parse_args()
    broker = MosquittoBroker(persistent=True).start()  # persistent: sessions, as in production
    try:
        with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-postgres-") as tmp:
            pg = postgres_figures(broker, args.dsn, args.results, args.batch)
            lite = sqlite_figures(broker, Path(tmp), args.results, args.batch)
    finally:
        broker.close()
    for figures in (pg, lite):
        figures["results_per_s"] = round(figures["distinct"] / figures["seconds"], 1)
        figures["lost"] = args.results - figures["distinct"]
        figures["duplicates"] = figures["rows"] - figures["distinct"]
    print(
        f"edgewise results --client-id, {args.results} results in batches of {args.batch}, "
        "QoS 1, Mosquitto defaults; commit before acknowledge"
    )
    print(f"  {'':<16} {'PostgreSQL':>14} {'SQLite':>14}")
    for key in ("rows", "lost", "duplicates", "seconds", "results_per_s"):
        print(f"  {key:<16} {pg[key]!s:>14} {lite[key]!s:>14}")
    met = "met" if pg["results_per_s"] >= 5000 else "NOT met"
    print(f"  goal: ≥ 5,000 results/s into PostgreSQL — {met}")
    print(json.dumps({
        "postgres_results_per_s": pg["results_per_s"],
        "postgres_lost": pg["lost"],
        "postgres_duplicates": pg["duplicates"],
        "sqlite_results_per_s": lite["results_per_s"],
        "sqlite_lost": lite["lost"],
        "results": args.results,
        "batch": args.batch,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
