"""``edgewise results`` and ``edgewise fleet`` as a user runs them, on the machine's Mosquitto."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import BIN

from agent.contract import Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

BROKER = BrokerAddress("127.0.0.1", 1883)


@pytest.fixture
def topics() -> Topics:
    """A topic root of the test's own, so runs side by side on the shared broker never meet."""
    return Topics(f"t{uuid.uuid4().hex[:10]}")


def consumer(topics: Topics, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "results", "--topic-root", topics.root, "--timeout", "5", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()  # printed once the broker confirmed the subscription
    assert line.startswith("listening on "), line
    return proc


def result(device: str, seq: int) -> dict[str, object]:
    return {"id": f"{device}:boot1:{seq}", "device": device, "seq": seq, "label": str(seq % 10),
            "score": 0.9, "captured_at": 1.0 + seq}  # fmt: skip


def publish_batches(topics: Topics, device: str, batches: list[list[int]]) -> None:
    client = connect(BROKER)
    try:
        for seqs in batches:
            payload = json.dumps([result(device, s) for s in seqs]).encode()
            client.publish(topics.results(device), payload, qos=1).wait_for_publish(10)
    finally:
        disconnect(client)


def test_duplicates_are_dropped_and_stored_once(topics: Topics, tmp_path: Path) -> None:
    jsonl, db = tmp_path / "out.jsonl", tmp_path / "out.db"
    proc = consumer(topics, "--count", "6", "--jsonl", str(jsonl), "--sqlite", str(db))
    # A batch sent again after a reconnect: at-least-once delivery, as the uplink does it.
    publish_batches(topics, "cam-1", [[1, 2, 3], [1, 2, 3], [4, 5], [5, 6]])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "6 results, 4 duplicates dropped" in err
    assert [json.loads(line)["seq"] for line in jsonl.read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    rows = sqlite3.connect(db).execute("SELECT seq FROM results ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert len(out.strip().splitlines()) == 6


def test_a_shared_group_splits_the_results(topics: Topics) -> None:
    first = consumer(topics, "--group", "workers", "--json", "--timeout", "3")
    second = consumer(topics, "--group", "workers", "--json", "--timeout", "3")
    publish_batches(topics, "cam-2", [[i] for i in range(1, 41)])
    seen = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        seen.append({json.loads(line)["seq"] for line in out.splitlines()})
    assert seen[0] and seen[1], "each consumer in the group takes a share"
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(1, 41))


def test_timeout_counts_from_the_start_when_nothing_arrives(topics: Topics) -> None:
    started = time.monotonic()
    proc = consumer(topics, "--timeout", "2")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.strip().splitlines() == ["0 results, 0 duplicates dropped"]
    assert 2 <= time.monotonic() - started < 30


def test_events_and_duplicates_do_not_keep_it_running(topics: Topics) -> None:
    """Only a new result renews --timeout: a device that keeps reporting a broken camera, or
    resends the same batch, does not keep the consumer up forever."""
    proc = consumer(topics, "--timeout", "2")
    stop = threading.Event()
    client = connect(BROKER)
    event = json.dumps({"type": "source", "state": "failed", "detail": "no camera"}).encode()

    def chatter() -> None:
        while not stop.wait(0.2):  # the pace of a chatty device, not a synchronisation
            client.publish(topics.events("cam-3"), event, qos=1)
            client.publish(topics.results("cam-3"), json.dumps([result("cam-3", 1)]), qos=1)

    thread = threading.Thread(target=chatter)
    started = time.monotonic()
    thread.start()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        thread.join()
        disconnect(client)
    assert proc.returncode == 0, err
    summary = re.fullmatch(r"1 results, (\d+) duplicates dropped", err.strip())
    assert summary and int(summary[1]) >= 1, err
    assert time.monotonic() - started < 30


def test_ctrl_c_keeps_the_summary_and_disconnects_cleanly(mosquitto: MosquittoBroker) -> None:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "results", "--port", str(mosquitto.port), "--client-id", "ctrl-c"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("listening on ")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["edgewise: interrupted; 0 results, 0 duplicates dropped"]
    deadline = time.monotonic() + 20
    while "Client ctrl-c disconnected." not in mosquitto.log_path.read_text():
        assert time.monotonic() < deadline, mosquitto.log_path.read_text()
        time.sleep(0.05)  # polling another process's log file: there is no event to wait on


def test_fleet_lists_devices_from_retained_status_and_telemetry(topics: Topics) -> None:
    client = connect(BROKER)
    status = {"state": "online", "model": {"name": "digits-cnn", "version": "1.2.0"}}
    # retained telemetry counts as heard at its own "at": just now, so the row is online
    telemetry = {"frames_per_second": 29.5, "latency_p50_seconds": 0.003,
                 "latency_p99_seconds": 0.0075, "results_queued": 12,
                 "at": time.time()}  # fmt: skip
    try:
        for device, leaf, body in (("cam-a", "status", status), ("cam-a", "telemetry", telemetry),
                                   ("cam-b", "status", {"state": "offline"})):  # fmt: skip
            info = client.publish(topics.device(device, leaf), json.dumps(body), 1, retain=True)
            info.wait_for_publish(10)
        run = subprocess.run(
            [str(BIN / "edgewise"), "fleet", "--once", "--interval", "1", "--topic-root",
             topics.root],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        for device, leaf in (("cam-a", "status"), ("cam-a", "telemetry"), ("cam-b", "status")):
            client.publish(topics.device(device, leaf), b"", 1, retain=True).wait_for_publish(10)
        disconnect(client)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    cam_a = next(line for line in lines if line.startswith("cam-a"))
    assert "online" in cam_a and "digits-cnn 1.2.0" in cam_a and "29.5" in cam_a
    assert "7.5" in cam_a and "12" in cam_a
    assert any(line.startswith("cam-b") and "offline" in line for line in lines)


# --- on a broker of the test's own: restarts, refusals, persistent sessions -------------------


def results_cli(broker: MosquittoBroker, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "results", "--port", str(broker.port), "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("listening on "), line + proc.stderr.read()
    return proc


def publish_to(broker: MosquittoBroker, device: str, batches: list[list[int]]) -> None:
    client = connect(BrokerAddress(broker.host, broker.port))
    try:
        for seqs in batches:
            payload = json.dumps([result(device, s) for s in seqs]).encode()
            client.publish(Topics().results(device), payload, qos=1).wait_for_publish(10)
    finally:
        disconnect(client)


def wait_for_log(broker: MosquittoBroker, text: str, after: int = 0) -> None:
    deadline = time.monotonic() + 30
    while text not in broker.log_path.read_text()[after:]:
        assert time.monotonic() < deadline, f"no {text!r} in the broker's log"
        time.sleep(0.05)  # polling another process's log file: there is no event to wait on


def read_seqs(proc: subprocess.Popen[str], count: int) -> list[int]:
    assert proc.stdout is not None
    return [json.loads(proc.stdout.readline())["seq"] for _ in range(count)]


@pytest.mark.parametrize(
    ("client_id", "persistent_broker"),
    [(None, True), ("keeps-a-session", False)],
    ids=["clean-session", "persistent-session-the-broker-forgot"],
)
def test_it_subscribes_again_after_the_broker_restarts(
    client_id: str | None, persistent_broker: bool
) -> None:
    broker = MosquittoBroker(persistent=persistent_broker, extra_config="log_type all\n").start()
    extra = ("--client-id", client_id) if client_id else ()
    proc = results_cli(broker, "--timeout", "60", "--count", "6", *extra)
    try:
        publish_to(broker, "cam-r", [[1, 2, 3]])
        assert read_seqs(proc, 3) == [1, 2, 3]
        broker.stop()
        restarted = len(broker.log_path.read_text())
        broker.start()
        wait_for_log(broker, "Sending SUBACK to", after=restarted)  # the consumer is back
        publish_to(broker, "cam-r", [[4, 5, 6]])
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        broker.close()
    assert proc.returncode == 0, err
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4, 5, 6]
    assert err.strip().splitlines()[-1] == "6 results, 0 duplicates dropped"


def _dynsec_plugin() -> Path:
    """Debian's mosquitto package ships it under /usr/lib/<arch triplet>/."""
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    found += sorted(Path("/usr/lib").glob("mosquitto_dynamic_security.so"))
    assert found, "mosquitto's dynamic security plugin is not installed"
    return found[0]


def _guarded_broker(subscribe: list[str], port: int | None = None) -> MosquittoBroker:
    """Mosquitto whose anonymous clients may subscribe to ``subscribe`` only. Its dynamic
    security plugin answers another SUBSCRIBE with a failure code (acl_file grants every
    subscription and only filters what is delivered)."""
    broker = MosquittoBroker(port=port, persistent=True)  # persistent: a folder it can read
    config = broker.config_path.with_name("dynsec.json")
    acls = [{"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": True}
            for t in subscribe]  # fmt: skip
    config.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": [], "groups": [{"groupname": "anyone", "roles": [{"rolename": "reader"}]}],
        "roles": [{"rolename": "reader", "acls": acls}], "anonymousGroup": "anyone",
    }))  # fmt: skip
    config.chmod(0o666)  # the plugin, running as mosquitto, saves it back
    broker.config_path.write_text(
        broker.config_path.read_text()
        + f"plugin {_dynsec_plugin()}\nplugin_opt_config_file {config}\n"
    )
    return broker.start()


EVENTS_ONLY = ["edgewise/v1/devices/+/events"]


def test_a_refused_subscription_is_one_line_and_exit_1() -> None:
    broker = _guarded_broker(EVENTS_ONLY)
    try:
        run = subprocess.run(
            [str(BIN / "edgewise"), "results", "--port", str(broker.port), "--timeout", "5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        broker.close()
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "refused the subscription to edgewise/v1/devices/+/results" in lines[0]
    assert "check its ACL" in lines[0]


def test_a_subscription_refused_after_a_reconnect_stops_it_too() -> None:
    """A broker that comes back with a stricter ACL: the consumer would sit deaf; it says so."""
    broker = _guarded_broker(["edgewise/#"])
    proc = results_cli(broker, "--timeout", "60")
    port = broker.port
    broker.close()
    stricter = _guarded_broker(EVENTS_ONLY, port=port)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        stricter.close()
    assert proc.returncode == 1, err
    assert "refused the subscription to edgewise/v1/devices/+/results" in err
    assert "Traceback" not in err


def test_a_persistent_consumer_gets_what_was_published_while_it_was_away() -> None:
    broker = MosquittoBroker(persistent=True).start()
    try:
        first = results_cli(broker, "--client-id", "away", "--timeout", "1")
        first.communicate(timeout=30)
        publish_to(broker, "cam-p", [[i, i + 1] for i in range(1, 40, 2)])  # 20 batches
        again = results_cli(broker, "--client-id", "away", "--count", "40", "--timeout", "10")
        out, err = again.communicate(timeout=30)
    finally:
        broker.close()
    assert again.returncode == 0, err
    assert sorted(json.loads(line)["seq"] for line in out.splitlines()) == list(range(1, 41))


def test_count_with_a_client_id_ends_on_a_batch_boundary_and_loses_nothing() -> None:
    """Three batches of five wait for the consumer; --count 3 takes the first batch whole, and
    what it received but did not handle stays with the session for the next run."""
    broker = MosquittoBroker(persistent=True).start()
    try:
        results_cli(broker, "--client-id", "counted", "--timeout", "1").communicate(timeout=30)
        publish_to(broker, "cam-c", [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]])
        first = results_cli(broker, "--client-id", "counted", "--count", "3")
        out1, err1 = first.communicate(timeout=30)
        second = results_cli(broker, "--client-id", "counted", "--timeout", "3")
        out2, err2 = second.communicate(timeout=30)
    finally:
        broker.close()
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    seen1 = [json.loads(line)["seq"] for line in out1.splitlines()]
    seen2 = [json.loads(line)["seq"] for line in out2.splitlines()]
    assert seen1 == [1, 2, 3, 4, 5], "the batch in hand is finished, not thrown away"
    assert seen2 == list(range(6, 16))


def test_ctrl_c_during_a_flood_is_one_line_and_130(tmp_path: Path) -> None:
    broker = MosquittoBroker().start()
    stop = threading.Event()

    def flood() -> None:
        client = connect(BrokerAddress(broker.host, broker.port))
        seq = 0
        while not stop.is_set():
            seq += 50
            batch = json.dumps([result("cam-f", s) for s in range(seq - 49, seq + 1)])
            client.publish(Topics().results("cam-f"), batch, qos=1).wait_for_publish(10)
        disconnect(client)

    proc = results_cli(broker, "--client-id", "flooded", "--sqlite", str(tmp_path / "r.db"))
    thread = threading.Thread(target=flood)
    thread.start()
    try:
        read_seqs(proc, 200)  # in full flow
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        thread.join()
        broker.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.fullmatch(r"edgewise: interrupted; \d+ results, \d+ duplicates dropped", err.strip())


def test_fleet_reads_the_summary_and_live_telemetry(topics: Topics) -> None:
    """Where retained messages miss wildcard subscriptions: the retained fleet summary on its
    exact topic, and telemetry arriving while --wait listens, fill the table."""
    client = connect(BROKER)
    summary = {"devices": {"cam-s": {"state": "online", "model": "digits-cnn 1.0.0", "fps": 7.5,
                                     "at": time.time()}},
               "updated_at": time.time()}  # fmt: skip
    live = {"state": "online", "frames_per_second": 33.5, "at": time.time(), "source_state": "open",
            "model": {"name": "digits-cnn", "version": "2.0.0"}}  # fmt: skip
    client.publish(topics.fleet_state(), json.dumps(summary), 1, retain=True).wait_for_publish(10)
    try:
        proc = subprocess.Popen(
            [str(BIN / "edgewise"), "fleet", "--once", "--wait", "2", "--topic-root", topics.root],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while proc.poll() is None:  # a device's telemetry cadence, not synchronisation
            client.publish(topics.telemetry("cam-t"), json.dumps(live), 1).wait_for_publish(10)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=30)
    finally:
        client.publish(topics.fleet_state(), b"", 1, retain=True).wait_for_publish(10)
        disconnect(client)
    assert proc.returncode == 0, err
    rows = {line.split()[0]: line for line in out.strip().splitlines()[1:]}
    assert "digits-cnn 1.0.0" in rows["cam-s"] and "7.5" in rows["cam-s"]
    assert (
        "online" in rows["cam-t"]
        and "digits-cnn 2.0.0" in rows["cam-t"]
        and "33.5" in rows["cam-t"]
    )
