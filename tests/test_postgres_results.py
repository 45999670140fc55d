"""``edgewise results --postgres`` against a real PostgreSQL (tests/postgres_server.py: the
machine's server or a private one) and a real Mosquitto: every result stored exactly once, with
redelivery, several consumers and a consumer killed mid-stream."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from helpers import BIN, stored_result

from agent.contract import Topics
from compiler.cli import main
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect


def publish(broker: MosquittoBroker, device: str, batches: list[list[int]]) -> None:
    client = connect(BrokerAddress(broker.host, broker.port))
    try:
        for seqs in batches:
            payload = json.dumps([stored_result(device, s) for s in seqs]).encode()
            client.publish(Topics().results(device), payload, qos=1).wait_for_publish(10)
    finally:
        disconnect(client)


def consumer(broker: MosquittoBroker, dsn: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "results", "--port", str(broker.port), "--postgres", dsn, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("listening on "), line + proc.stderr.read()
    return proc


def finish(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def seqs(dsn: str, device: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq FROM results WHERE device = %s ORDER BY seq", (device,))
        return [seq for (seq,) in rows]


def test_results_land_in_typed_columns_once_even_when_sent_twice(
    mosquitto: MosquittoBroker, pg: str
) -> None:
    proc = consumer(mosquitto, pg, "--count", "6", "--timeout", "10")
    publish(mosquitto, "cam-1", [[1, 2, 3], [1, 2, 3], [4, 5], [5, 6]])
    assert "6 results, 4 duplicates dropped" in finish(proc)
    # A second consumer, with no memory of the first, gets the same batches again: the database
    # keeps one row per id.
    again = consumer(mosquitto, pg, "--count", "6", "--timeout", "10")
    publish(mosquitto, "cam-1", [[1, 2, 3], [4, 5, 6]])
    finish(again)
    assert seqs(pg, "cam-1") == [1, 2, 3, 4, 5, 6]
    with psycopg.connect(pg) as conn:
        row = conn.execute(
            "SELECT id, model_name, model_version, label, score, extract(epoch FROM captured_at), "
            "published_at > captured_at, latency_ms, inference_ms, result->'model'->>'name' "
            "FROM results WHERE seq = 3"
        ).fetchone()
    assert row is not None
    assert row[:5] == ("cam-1:boot1:3", "digits-cnn", "1.0.0", "3", 0.9)
    assert float(row[5]) == pytest.approx(1795894882.25)
    assert row[6:] == (True, 0.52, 0.31, "digits-cnn")


def test_two_consumers_in_a_group_store_every_result_once(
    mosquitto: MosquittoBroker, pg: str
) -> None:
    first = consumer(mosquitto, pg, "--group", "db", "--json", "--timeout", "3")
    second = consumer(mosquitto, pg, "--group", "db", "--json", "--timeout", "3")
    publish(mosquitto, "cam-2", [[i, i + 1] for i in range(1, 200, 2)])
    shares = []
    for proc in (first, second):
        assert proc.stdout is not None
        out = proc.stdout.read()
        finish(proc)
        shares.append({json.loads(line)["seq"] for line in out.splitlines()})
    assert shares[0] and shares[1], "each consumer in the group takes a share"
    assert seqs(pg, "cam-2") == list(range(1, 201))


def test_a_consumer_killed_mid_stream_and_restarted_stores_each_result_once(pg: str) -> None:
    """With --client-id a message is acknowledged only after its rows are committed: kill -9
    loses nothing (what was not acknowledged comes again) and duplicates nothing (a committed
    row that comes again is skipped by ON CONFLICT)."""
    broker = MosquittoBroker(persistent=True).start()
    try:
        consumer(broker, pg, "--client-id", "db-1", "--timeout", "1").communicate(timeout=30)
        publish(broker, "cam-k", [list(range(i, i + 20)) for i in range(1, 4000, 20)])
        first = consumer(broker, pg, "--client-id", "db-1", "--timeout", "30")
        assert first.stdout is not None
        for _ in range(1500):  # in full flow; the unread pipe holds it back from the end
            first.stdout.readline()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        stored = len(seqs(pg, "cam-k"))
        assert 0 < stored < 4000, "killed mid-stream"
        again = consumer(broker, pg, "--client-id", "db-1", "--timeout", "3")
        again.stdout.read()  # type: ignore[union-attr]
        finish(again)
    finally:
        broker.close()
    assert seqs(pg, "cam-k") == list(range(1, 4001))


def test_two_consumers_creating_the_schema_at_once_both_start(
    mosquitto: MosquittoBroker, pg: str
) -> None:
    procs = [consumer(mosquitto, pg, "--timeout", "1") for _ in range(2)]
    for proc in procs:
        finish(proc)


@pytest.mark.parametrize(
    ("dsn", "code", "says"),
    [
        ("host=127.0.0.1 port={port} user=postgres password=s3cret", 1, "cannot connect"),
        ("{server} dbname=no_such_database", 1, "does not exist"),
        ("not a dsn", 2, "not a PostgreSQL connection string"),
        ("host=127.0.0.1 port=many", 2, "is not a number"),
    ],
)
def test_a_bad_dsn_is_one_line_and_an_exit_code(
    dsn: str, code: int, says: str, pg_server: str, mosquitto: MosquittoBroker
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    filled = dsn.format(port=closed, server=pg_server.replace("dbname=postgres", ""))
    run = subprocess.run(
        [str(BIN / "edgewise"), "results", "--port", str(mosquitto.port), "--postgres", filled],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == code, run.stderr
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert lines[0].startswith("edgewise: ") and says in lines[0]
    assert "s3cret" not in run.stderr, "the password is never printed"


def test_a_missing_driver_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    assert main(["results", "--postgres", "host=127.0.0.1", "--port", "1"]) == 69  # an extra
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'edgewise[postgres]'" in lines[0]
