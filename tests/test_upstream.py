"""Results reach the cloud exactly once after dedupe, whatever happens to the broker or the
agent; the status topic tells who is online."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
from device_harness import DEVICE, TOPICS, install
from helpers import AgentProcess

from compiler.broker import MosquittoBroker, free_port
from compiler.demo import write_agent_config
from compiler.mqtt import BrokerAddress, connect, disconnect
from compiler.results import Deduper, DeviceFeed

CONSUMER = "edgewise-test-consumer"


class Consumer:
    """A cloud consumer with a persistent session: the broker queues results while it is away."""

    def __init__(self, broker: MosquittoBroker):
        self.client = connect(
            BrokerAddress(broker.host, broker.port), client_id=CONSUMER, clean_session=False
        )
        self.feed = DeviceFeed(self.client, TOPICS, DEVICE)
        self.dedupe = Deduper()
        self.results: list[dict] = []

    def take(self, timeout: float = 1.0, done=lambda: False) -> None:  # type: ignore[no-untyped-def]
        """Collect unique results, in arrival order, for ``timeout`` s or until ``done()``."""
        deadline = time.monotonic() + timeout
        while not done() and (remaining := deadline - time.monotonic()) > 0:
            message = self.feed.wait_for("results", remaining)
            if message is not None and self.dedupe.first_time(message["id"]):
                self.results.append(message)

    def collect_until(self, done, timeout: float) -> None:  # type: ignore[no-untyped-def]
        self.take(timeout, done)
        assert done(), f"gave up with {len(self.results)} results"

    def close(self) -> None:
        disconnect(self.client)


def queued_in_outbox(state: Path) -> tuple[int, int]:
    """(rows, dropped) in the agent's outbox, read beside the running agent (WAL allows it)."""
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        dropped = db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0]
        return rows, dropped
    finally:
        db.close()


def wait_until(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # polling a file the agent writes; there is no event to wait on


def assert_complete_and_ordered(results: list[dict], boot: str | None = None) -> int:
    seqs = [r["seq"] for r in results if boot is None or r["id"].split(":")[1] == boot]
    assert seqs == sorted(seqs), "first arrivals must keep the device's order"
    assert seqs == list(range(1, len(seqs) + 1)), (
        f"gaps: {sorted(set(range(1, max(seqs) + 1)) - set(seqs))[:10]}"
    )
    return len(seqs)


@pytest.fixture
def broker():  # type: ignore[no-untyped-def]
    broker = MosquittoBroker(persistent=True).start()
    yield broker
    broker.close()


def start_agent(broker, compiled, signing_keys, video, tmp_path, extra: str = "") -> AgentProcess:  # type: ignore[no-untyped-def]
    if not (tmp_path / "state" / "current").exists():
        install(compiled.package, tmp_path / "state")
    config = write_agent_config(
        tmp_path / "agent.toml", port=broker.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=extra,
    )  # fmt: skip
    config.write_text(config.read_text().replace("[mqtt]\n", "[mqtt]\nkeepalive = 2\n"))
    return AgentProcess(config, log=tmp_path / f"agent-{time.monotonic_ns()}.log")


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
        broker.start()
        watcher = connect(BrokerAddress(broker.host, broker.port))
        seen: list[dict] = []
        watcher.on_message = lambda _c, _u, msg: seen.append(json.loads(msg.payload))
        watcher.subscribe(TOPICS.device(DEVICE, "telemetry"), qos=1)
        wait_until(lambda: any(t.get("results_dropped", 0) >= 100 for t in seen), 20)
        disconnect(watcher)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        dropped = re.search(rb'edgewise_results_dropped\{device="cam-1"\} ([0-9.e+]+)', metrics)
        assert dropped and float(dropped[1]) >= 100, metrics.decode()[:2000]
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
