"""``edgewise results --partition i/n`` into one PostgreSQL (tests/postgres_server.py) on a real
Mosquitto: three consumers each keep their own devices; every result is stored once."""

from __future__ import annotations

import json
import subprocess

import psycopg
from helpers import BIN, stored_result

from agent.contract import Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.results import Partition

DEVICES = [f"cam-{i}" for i in range(9)]
PER_DEVICE = 4


def consumer(broker: MosquittoBroker, dsn: str, index: int, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "results", "--port", str(broker.port), "--postgres", dsn,
         "--partition", f"{index}/3", "--count", str(count), "--timeout", "30",
         "--client-id", f"partition-{index}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("listening on ")
    assert proc.stderr.readline().startswith(f"partition {index}/3: ")
    return proc


def test_three_partitions_store_every_result_once(mosquitto: MosquittoBroker, pg: str) -> None:
    expected = [PER_DEVICE * sum(Partition(i, 3).keeps(d) for d in DEVICES) for i in range(3)]
    procs = [consumer(mosquitto, pg, i, expected[i]) for i in range(3) if expected[i]]
    client = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    try:
        for device in DEVICES:
            batch = json.dumps([stored_result(device, s) for s in range(PER_DEVICE)]).encode()
            client.publish(Topics().results(device), batch, qos=1).wait_for_publish(10)
    finally:
        disconnect(client)
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "0 duplicates dropped" in err
    with psycopg.connect(pg) as conn:
        rows = conn.execute("SELECT device, seq FROM results").fetchall()
    assert sorted(rows) == sorted((d, s) for d in DEVICES for s in range(PER_DEVICE))
