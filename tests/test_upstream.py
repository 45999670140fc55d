"""Results reach the cloud exactly once after dedupe, whatever happens to the broker or the
agent; the status topic tells who is online."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import urllib.request

import pytest
from device_harness import DEVICE, TOPICS
from metrics_rules import problems
from upstream_harness import (
    Consumer,
    assert_complete_and_ordered,
    queued_in_outbox,
    start_agent,
    wait_until,
)

from compiler.fleet.broker import MosquittoBroker, free_port
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect


@pytest.fixture
def broker():  # type: ignore[no-untyped-def]
    broker = MosquittoBroker(persistent=True).start()
    yield broker
    broker.close()


def test_ten_broker_restarts_during_a_stream_lose_nothing(
    broker, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path)
    try:
        for _ in range(10):
            before = len(consumer.results)
            consumer.collect_until(lambda b=before: len(consumer.results) >= b + 45, 30)
            broker.stop()
            broker.start()
        consumer.collect_until(lambda: len(consumer.results) >= 600, 60)
    finally:
        assert agent.stop() == 0, agent.output()[-2000:]
    # Graceful stop flushed the outbox; everything it held is on the broker.
    assert queued_in_outbox(tmp_path / "state")[0] == 0
    expected = agent.results_produced()
    consumer.collect_until(lambda: len(consumer.results) >= expected, 60)
    consumer.close()
    assert assert_complete_and_ordered(consumer.results) == expected


def test_outbox_grows_while_the_broker_is_away_then_drains(
    broker, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path)
    try:
        consumer.collect_until(lambda: len(consumer.results) >= 10, 30)
        broker.stop()
        wait_until(lambda: queued_in_outbox(tmp_path / "state")[0] >= 150, 30)
        broker.start()
        wait_until(lambda: queued_in_outbox(tmp_path / "state")[0] < 30, 30)
    finally:
        assert agent.stop() == 0
    assert queued_in_outbox(tmp_path / "state") == (0, 0)
    expected = agent.results_produced()
    consumer.collect_until(lambda: len(consumer.results) >= expected, 60)
    consumer.close()
    assert assert_complete_and_ordered(consumer.results) == expected >= 160


def test_sigkill_mid_stream_loses_nothing_that_reached_the_outbox(
    broker, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path)
    consumer.collect_until(lambda: len(consumer.results) >= 60, 30)
    boot = consumer.results[0]["id"].split(":")[1]
    agent.kill()
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    waiting = [json.loads(p) for (p,) in db.execute("SELECT payload FROM results")]
    db.close()
    consumer.take(0.5)
    last = max([r["seq"] for r in consumer.results] + [r["seq"] for r in waiting])
    again = start_agent(broker, compiled, signing_keys, video, tmp_path)
    try:
        consumer.collect_until(
            lambda: sum(r["id"].split(":")[1] == boot for r in consumer.results) >= last, 30
        )
    finally:
        again.stop()
        consumer.close()
    assert assert_complete_and_ordered(consumer.results, boot) == last


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _metric(port: int, name: str, label: str = "") -> float | None:
    """The value of ``name`` for the device (and ``label``, as ``k="v"``) on /metrics."""
    labels = f'device="{DEVICE}"' + (f",{label}" if label else "")
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", _scrape(port), re.MULTILINE)
    return float(found[1]) if found else None


def test_queue_cap_drops_the_oldest_and_says_so(
    broker, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    port = free_port()
    extra = f"[outbox]\nmax_rows = 50\n\n[telemetry]\ninterval_s = 0.5\nprometheus_port = {port}\n"
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path, extra=extra)
    try:
        consumer.collect_until(lambda: len(consumer.results) >= 5, 30)
        broker.stop()
        wait_until(lambda: queued_in_outbox(tmp_path / "state")[1] >= 100, 30)
        # /metrics says the broker is gone while it is (read at the scrape, not from telemetry).
        wait_until(lambda: _metric(port, "edgewise_broker_connected") == 0.0, 10)
        broker.start()
        watcher = connect(BrokerAddress(broker.host, broker.port))
        seen: list[dict] = []
        watcher.on_message = lambda _c, _u, msg: seen.append(json.loads(msg.payload))
        watcher.subscribe(TOPICS.device(DEVICE, "telemetry"), qos=1)
        wait_until(lambda: any(t.get("results_dropped_total", 0) >= 100 for t in seen), 20)
        disconnect(watcher)
        # Dropped by the outbox's own cap: the disk and the packet cap were never the problem.
        assert seen[-1]["outbox_errors_total"] == 0 and seen[-1]["results_in_memory"] == 0
        assert seen[-1]["max_packet_bytes"] == 512 * 1024
        dropped = _metric(port, "edgewise_results_dropped_total")
        assert dropped is not None and dropped >= 100
        wait_until(lambda: _metric(port, "edgewise_broker_connected") == 1.0, 10)
        # The real agent's endpoint: base units, counters, its histograms, all by the rules.
        body = _scrape(port)
        assert problems(body) == [], body[:3000]
        assert (_metric(port, "edgewise_frames_total") or 0) > 0
        assert (_metric(port, "edgewise_frame_latency_seconds_count", 'stage="total"') or 0) > 0
        assert _metric(port, "edgewise_deployments_total", 'outcome="rejected"') == 0.0
        consumer.collect_until(lambda: len(consumer.results) >= 80, 30)
    finally:
        agent.stop()
        consumer.close()
    seqs = [r["seq"] for r in consumer.results]
    gap = [b for a, b in itertools.pairwise(seqs) if b != a + 1]
    assert gap and gap[0] > 100, "after the outage the oldest results are gone, the newest kept"


def test_last_will_and_birth(broker, compiled, signing_keys, video, tmp_path) -> None:  # type: ignore[no-untyped-def]
    statuses: list[dict] = []
    watcher = connect(BrokerAddress(broker.host, broker.port))
    watcher.on_message = lambda _c, _u, msg: statuses.append(json.loads(msg.payload))
    watcher.subscribe(TOPICS.status(DEVICE), qos=1)
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path)
    wait_until(lambda: any(s["state"] == "online" for s in statuses), 20)
    first_boot = statuses[-1]["boot_id"]
    agent.kill()  # no goodbye: the broker publishes the will after 1.5 × keepalive (2 s)
    wait_until(lambda: statuses[-1]["state"] == "offline", 20)
    again = start_agent(broker, compiled, signing_keys, video, tmp_path)
    try:
        wait_until(lambda: statuses[-1]["state"] == "online", 20)
        assert statuses[-1]["boot_id"] != first_boot
        assert statuses[-1]["model"] == {"name": "digits-cnn", "version": "1.0.0"}
    finally:
        again.stop()
    wait_until(lambda: statuses[-1]["state"] == "offline", 20)  # a clean stop says goodbye
    disconnect(watcher)
