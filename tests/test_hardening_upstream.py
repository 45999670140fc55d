"""Nothing gets stuck upstream: result batches stay under the broker's packet cap, a result too big
for any message is sent truncated, and events and status are shortened rather than sent
oversize — on a real Mosquitto with the shipped 1 MiB ``max_packet_size``, and the real agent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from device_harness import DEVICE, TOPICS, install
from upstream_harness import (
    Consumer,
    Watcher,
    assert_complete_and_ordered,
    queued_in_outbox,
    start_agent,
    wait_until,
)
from wide_results import wide_results_package

from compiler.fleet.broker import MosquittoBroker

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"
# The shipped broker's cap (1 MiB), as it ships.
SHIPPED_CAP = next(
    line for line in SHIPPED.read_text().splitlines() if line.startswith("max_packet_size ")
)


@pytest.fixture
def capped_broker():  # type: ignore[no-untyped-def]
    broker = MosquittoBroker(persistent=True, extra_config=SHIPPED_CAP + "\n").start()
    yield broker
    broker.close()


@pytest.fixture
def wide_state(compiled, signing_keys, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A state dir serving the 6 KB-result model."""
    package = wide_results_package(compiled.package, tmp_path / "wide", signing_keys[0])
    install(package, tmp_path / "state")
    return tmp_path / "state"


def oversize_disconnects(broker: MosquittoBroker) -> int:
    return broker.log_path.read_text().count("disconnected due to oversize packet")


def test_an_outage_with_6_kb_results_drains_under_a_1_mib_cap(
    capped_broker, wide_state, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The issue's failure: 500 results of 6 KB make a 3 MB batch, which a broker capped at
    1 MiB answers by disconnecting the agent, forever. Batches capped by bytes drain."""
    consumer = Consumer(capped_broker)
    # Reconnect within 2 s of the broker's return: the time measured is the drain's.
    agent = start_agent(
        capped_broker, compiled, signing_keys, video, tmp_path, mqtt="reconnect_max_delay = 2.0\n"
    )
    try:
        consumer.collect_until(lambda: len(consumer.results) >= 5, 30)
        size = len(json.dumps(consumer.results[0], separators=(",", ":")))
        assert 5_000 < size < 8_000, size
        capped_broker.stop()
        # 250 results × 6 KB: one batch of them would be 1.5 MB, over the broker's cap.
        wait_until(lambda: queued_in_outbox(wide_state)[0] >= 250, 60)
        capped_broker.start()
        back, queued = time.monotonic(), queued_in_outbox(wide_state)[0]
        wait_until(
            lambda: queued_in_outbox(wide_state)[0] < 30, 30,
            lambda: f"{queued_in_outbox(wide_state)} queued, dropped; "
            f"{oversize_disconnects(capped_broker)} oversize disconnects",
        )  # fmt: skip
        drain_s = time.monotonic() - back
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
    assert oversize_disconnects(capped_broker) == 0
    expected = agent.results_produced()
    consumer.collect_until(lambda: len(consumer.results) >= expected, 60)
    consumer.close()
    assert assert_complete_and_ordered(consumer.results) == expected >= 250
    print(f"{queued} results of {size} B queued; < 30 left {drain_s:.1f} s after the return")


def test_a_result_too_big_for_any_message_is_sent_truncated(
    capped_broker, wide_state, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    watcher = Watcher(capped_broker, TOPICS.device(DEVICE, "+"))
    agent = start_agent(
        capped_broker, compiled, signing_keys, video, tmp_path,
        mqtt="max_packet_bytes = 4096\n", extra="[telemetry]\ninterval_s = 0.5\n",
    )  # fmt: skip
    try:
        wait_until(
            lambda: any(t.get("results_truncated_total", 0) >= 20 for t in watcher.telemetry()), 30
        )
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
        watcher.close()
    batches = watcher.on("results")
    assert batches and max(len(b) for b in batches) <= 4096
    results = [r for b in batches for r in json.loads(b)]
    assert all(r["truncated"] and r["predictions_total"] == 160 for r in results)
    kept = [len(r["predictions"]) for r in results]
    assert min(kept) > 50, "as many predictions as fit are kept, best first"
    assert all(r["predictions"][0]["label"] == r["label"] for r in results)
    assert watcher.telemetry()[-1]["max_packet_bytes"] == 4096
    # Status and telemetry fit the 2 KiB cap for small messages as they are.
    small = [json.loads(p) for p in watcher.on("status") + watcher.on("telemetry")]
    assert small and not any("truncated" in m for m in small)
    print(f"largest telemetry {max(len(p) for p in watcher.on('telemetry'))} B")
    assert oversize_disconnects(capped_broker) == 0


def test_mqtt5_reads_the_broker_cap_from_connack(
    wide_state, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The agent is configured for 512 KiB; the broker says 64 KiB in CONNACK and is obeyed."""
    broker = MosquittoBroker(persistent=True, extra_config="max_packet_size 65536\n").start()
    consumer = Consumer(broker)
    watcher = Watcher(broker, TOPICS.device(DEVICE, "+"))
    agent = start_agent(
        broker, compiled, signing_keys, video, tmp_path, mqtt='protocol = "5"\n',
        extra="[telemetry]\ninterval_s = 0.5\n",
    )  # fmt: skip
    try:
        consumer.collect_until(lambda: len(consumer.results) >= 5, 30)
        broker.stop()
        wait_until(lambda: queued_in_outbox(wide_state)[0] >= 40, 60)  # 40 × 6.5 KB > 64 KiB
        broker.start()
        wait_until(
            lambda: queued_in_outbox(wide_state)[0] < 10, 30,
            lambda: f"{queued_in_outbox(wide_state)} {agent.output()[-2000:]}",
        )  # fmt: skip
        wait_until(lambda: any(t["max_packet_bytes"] == 65536 for t in watcher.telemetry()), 20)
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
        watcher.close()
    expected = agent.results_produced()
    consumer.collect_until(lambda: len(consumer.results) >= expected, 60)
    consumer.close()
    assert assert_complete_and_ordered(consumer.results) == expected
    sizes = [len(b) for b in watcher.on("results")]
    assert 32_000 < max(sizes) <= 65536 - len(TOPICS.results(DEVICE)) - 16, max(sizes)
    assert oversize_disconnects(broker) == 0
    broker.close()
