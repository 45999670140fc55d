"""The cloud client against what brokers offer: MQTT 5 where the broker speaks it (Mosquitto),
3.1.1 where it does not (NATS, a real 3.1.1-only broker); ``edgewise results --group`` refused
where shared subscriptions are unavailable, and ``--partition i/n`` splitting devices instead."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import NatsServer
from helpers import BIN

from agent.contract import Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, capabilities, connect, disconnect
from compiler.fleet.results import Partition

DEVICES = [f"cam-{i}" for i in range(12)]


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerAddress]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield BrokerAddress(server.host, server.mqtt_port)


def result(device: str, seq: int) -> dict[str, object]:
    return {"id": f"{device}:boot1:{seq}", "device": device, "seq": seq, "label": "1",
            "score": 0.9, "captured_at": 1.0 + seq}  # fmt: skip


def test_mosquitto_is_spoken_to_in_mqtt5_and_its_connack_is_read(
    mosquitto: MosquittoBroker,
) -> None:
    client = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    try:
        found = capabilities(client)
    finally:
        disconnect(client)
    assert found.protocol == "5"
    assert found.shared_subscription_available and found.retain_available
    assert found.receive_maximum == 20  # Mosquitto's max_inflight_messages, from CONNACK


def test_a_311_only_broker_is_spoken_to_in_311(nats: BrokerAddress) -> None:
    """NATS refuses MQTT 5 with CONNACK "unsupported protocol version": the same client then
    connects in 3.1.1, and messages flow both ways."""
    client = connect(nats)
    got = threading.Event()
    client.on_message = lambda _c, _u, msg: got.set() if msg.payload == b"hello" else None
    try:
        assert capabilities(client).protocol == "3.1.1"
        Subscriber(client).subscribe([("caps/echo", 1)])
        client.publish("caps/echo", b"hello", qos=1).wait_for_publish(10)
        assert got.wait(10), "nothing came back over the 3.1.1 connection"
    finally:
        disconnect(client)


def test_a_persistent_session_is_kept_in_311_too(nats: BrokerAddress) -> None:
    first = connect(nats, client_id="caps-keeper", clean_session=False)
    Subscriber(first).subscribe([("caps/kept", 1)])
    disconnect(first)
    sender = connect(nats)
    sender.publish("caps/kept", b"while away", qos=1).wait_for_publish(10)
    disconnect(sender)
    got = threading.Event()

    def prepare(client):  # type: ignore[no-untyped-def]
        client.on_message = lambda _c, _u, msg: got.set()

    again = connect(nats, client_id="caps-keeper", clean_session=False, prepare=prepare)
    try:
        assert got.wait(10), "the session did not keep the message"
    finally:
        disconnect(again)


def _no_shared_subscriptions_broker() -> tuple[socket.socket, threading.Thread]:
    """Just enough of an MQTT 5 broker to answer CONNECT with a CONNACK that says "Shared
    Subscription Available: 0" (no broker at hand can be configured to say it)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)  # CONNECT
            conn.sendall(bytes([0x20, 5, 0, 0, 2, 0x2A, 0]))  # CONNACK, property 0x2A = 0
            while conn.recv(4096):  # until the client hangs up
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_group_is_refused_where_the_broker_has_no_shared_subscriptions() -> None:
    server, thread = _no_shared_subscriptions_broker()
    try:
        port = server.getsockname()[1]
        run = subprocess.run(
            [str(BIN / "edgewise"), "results", "--port", str(port), "--group", "workers"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        thread.join(10)
        server.close()
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no shared subscriptions" in lines[0], run.stderr
    assert "--partition i/n" in lines[0] and "Traceback" not in run.stderr


def test_group_on_a_311_broker_warns_that_share_may_be_ignored(nats: BrokerAddress) -> None:
    run = subprocess.run(
        [str(BIN / "edgewise"), "results", "--port", str(nats.port), "--group", "workers",
         "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "--partition i/n" in warning[0], run.stderr


@pytest.mark.parametrize("value", ["3/3", "1", "a/3", "-1/3", "0/0", "1/2/3"])
def test_a_bad_partition_is_one_line_and_exit_2(value: str) -> None:
    run = subprocess.run(
        [str(BIN / "edgewise"), "results", "--partition", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "--partition" in run.stderr


def test_partition_and_device_or_group_do_not_mix() -> None:
    for extra in (["--device", "cam-1"], ["--group", "workers"]):
        run = subprocess.run(
            [str(BIN / "edgewise"), "results", "--partition", "0/2", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_partitions_cover_every_device_once() -> None:
    owners = {d: [i for i in range(3) if Partition(i, 3).keeps(d)] for d in DEVICES}
    assert all(len(found) == 1 for found in owners.values())
    assert {found[0] for found in owners.values()} == {0, 1, 2}, "12 devices over 3 partitions"


def _partition_consumer(
    nats: BrokerAddress, index: int, db: Path, count: int
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "results", "--port", str(nats.port), "--partition", f"{index}/3",
         "--sqlite", str(db), "--json", "--count", str(count), "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("listening on ")
    assert proc.stderr.readline().startswith(f"partition {index}/3: devices whose sha256(id)")
    return proc


def test_three_partition_consumers_split_the_devices_on_a_311_broker(
    nats: BrokerAddress, tmp_path: Path
) -> None:
    """Where $share delivers nothing (NATS), three consumers with --partition 0/3, 1/3, 2/3 each
    store their own devices' results: a disjoint union covering every device, no duplicates."""
    per_device = 3
    expected = [sum(per_device for d in DEVICES if Partition(i, 3).keeps(d)) for i in range(3)]
    dbs = [tmp_path / f"part{i}.db" for i in range(3)]
    procs = [_partition_consumer(nats, i, dbs[i], expected[i]) for i in range(3)]
    client = connect(nats)
    try:
        for device in DEVICES:
            for seq in range(per_device):
                payload = json.dumps([result(device, seq)]).encode()
                client.publish(Topics().results(device), payload, qos=1).wait_for_publish(10)
    finally:
        disconnect(client)
    stored: list[set[tuple[str, int]]] = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"{expected[i]} results, 0 duplicates dropped" in err
        rows = sqlite3.connect(dbs[i]).execute("SELECT device, seq FROM results").fetchall()
        stored.append({(device, seq) for device, seq in rows})
        assert all(Partition(i, 3).keeps(device) for device, _ in rows)
        assert len(rows) == expected[i]
    assert not (stored[0] & stored[1] or stored[0] & stored[2] or stored[1] & stored[2])
    everything = {(d, s) for d in DEVICES for s in range(per_device)}
    assert stored[0] | stored[1] | stored[2] == everything
