"""A full disk under ``state_dir``, for real: a small tmpfs mounted as the agent's state
directory and filled with a ballast file. The agent reports it (an ``outbox`` event, telemetry,
an error line in its log), keeps serving with results held in memory, and recovers by itself
when the ballast is deleted — every result delivered exactly once after dedupe, or, past the
memory bound, the oldest dropped and counted. After ``[outbox] max_failing_s`` without a single
write it exits 1 so that systemd starts it again, and the new agent starts on the full disk."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_harness import DEVICE, TOPICS, install
from small_disk import fill, tmpfs
from upstream_harness import (
    Consumer,
    Watcher,
    assert_complete_and_ordered,
    queued_in_outbox,
    start_agent,
    wait_until,
)

from compiler.fleet.broker import MosquittoBroker

TELEMETRY = "[telemetry]\ninterval_s = 0.5\n"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(persistent=True).start()
    yield broker
    broker.close()


@pytest.fixture
def small_disk(tmp_path: Path, compiled) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """A 16 MB tmpfs as the state directory, the demo model installed on it."""
    with tmpfs(tmp_path / "state") as state:
        install(compiled.package, state)
        yield state


def logged(agent, text: str, level: str = "") -> bool:  # type: ignore[no-untyped-def]
    """A line of the agent's log holds ``text`` (and ``level``, e.g. ERROR)."""
    return any(text in line and level in line for line in agent.output().splitlines())


def test_a_full_disk_is_reported_held_in_memory_and_recovered(
    broker, small_disk, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    watcher = Watcher(broker, TOPICS.device(DEVICE, "+"))
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path, extra=TELEMETRY)
    try:
        consumer.collect_until(lambda: len(consumer.results) >= 10, 30)
        broker.stop()  # the outbox must grow, so the disk is needed
        ballast = fill(small_disk)
        wait_until(lambda: logged(agent, "outbox: cannot write results", "ERROR"), 30)
        broker.start()
        wait_until(lambda: any(t["results_in_memory"] > 0 for t in watcher.telemetry()), 30)
        assert agent.proc.poll() is None, "the agent keeps running on a full disk"
        ballast.unlink()
        wait_until(lambda: watcher.events("outbox")[-1:] and
                   watcher.events("outbox")[-1]["state"] == "recovered", 30)  # fmt: skip
        wait_until(lambda: queued_in_outbox(small_disk)[0] < 30, 30)
        wait_until(lambda: watcher.latest("outbox_error") == [None], 10)
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
        watcher.close()
    expected = agent.results_produced()
    consumer.collect_until(lambda: len(consumer.results) >= expected, 60)
    consumer.close()
    assert assert_complete_and_ordered(consumer.results) == expected
    failing, recovered = watcher.events("outbox")
    assert (failing["state"], recovered["state"]) == ("failing", "recovered")
    assert "disk is full" in failing["error"]
    assert recovered["dropped"] == 0
    reported = [t for t in watcher.telemetry() if t["outbox_error"]]
    assert reported and reported[-1]["outbox_errors_total"] >= 1
    assert queued_in_outbox(small_disk) == (0, 0)


def test_past_the_memory_bound_the_oldest_are_dropped_and_counted(
    broker, small_disk, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    watcher = Watcher(broker, TOPICS.device(DEVICE, "+"))
    extra = f"[outbox]\nmemory_bytes = 20000\n\n{TELEMETRY}"  # about 40 results
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path, extra=extra)
    try:
        consumer.collect_until(lambda: len(consumer.results) >= 10, 30)
        broker.stop()
        ballast = fill(small_disk)
        wait_until(lambda: logged(agent, "dropping the oldest"), 30)
        ballast.unlink()
        broker.start()
        wait_until(lambda: [e["state"] for e in watcher.events("outbox")][-1:] == ["recovered"], 30)
        wait_until(lambda: queued_in_outbox(small_disk)[0] < 30, 30)
        dropped = watcher.events("outbox")[-1]["dropped"]
        assert dropped > 0
        wait_until(lambda: watcher.latest("results_dropped_total") == [dropped], 10)
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
        watcher.close()
    expected = agent.results_produced()
    consumer.collect_until(lambda: len(consumer.results) >= expected - dropped, 60)
    consumer.close()
    seqs = sorted(r["seq"] for r in consumer.results)
    missing = sorted(set(range(1, expected + 1)) - set(seqs))
    assert len(missing) == dropped, "exactly the dropped results are missing"
    assert all(b == a + 1 for a, b in itertools.pairwise(missing)), "one run of the oldest held"


def test_no_write_for_max_failing_s_exits_1_and_the_next_start_recovers(
    broker, small_disk, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    consumer = Consumer(broker)
    extra = "[outbox]\nmax_failing_s = 2\n"
    agent = start_agent(broker, compiled, signing_keys, video, tmp_path, extra=extra)
    consumer.collect_until(lambda: len(consumer.results) >= 10, 30)
    broker.stop()
    ballast = fill(small_disk)
    assert agent.proc.wait(60) == 1, agent.output()[-3000:]
    assert logged(agent, "no write succeeded for 2 s")
    # systemd starts it again: on the still-full disk, it runs and serves from memory...
    broker.start()
    again = start_agent(broker, compiled, signing_keys, video, tmp_path, extra=extra)
    try:
        wait_until(lambda: logged(again, "outbox: cannot write results"), 30)
        assert again.proc.poll() is None, again.output()[-3000:]
        # ... and recovers by itself when space returns.
        ballast.unlink()
        before = len(consumer.results)
        consumer.collect_until(lambda: len(consumer.results) >= before + 30, 30)
        assert logged(again, "outbox: writing again")
    finally:
        again.stop()
        consumer.close()
