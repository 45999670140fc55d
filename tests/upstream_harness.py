"""What the upstream tests share: a persistent cloud consumer, the real agent on a test broker,
and reading the agent's outbox beside it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from device_harness import DEVICE, TOPICS, install
from helpers import AgentProcess

from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.fleet.results import Deduper, DeviceFeed
from compiler.recipe.demo import write_agent_config

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


def wait_until(condition, timeout: float, state=lambda: "") -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition``; on timeout fail with what ``state()`` says."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in time {state()}"
        time.sleep(0.05)  # polling a file the agent writes; there is no event to wait on


def assert_complete_and_ordered(results: list[dict], boot: str | None = None) -> int:
    seqs = [r["seq"] for r in results if boot is None or r["id"].split(":")[1] == boot]
    assert seqs == sorted(seqs), "first arrivals must keep the device's order"
    assert seqs == list(range(1, len(seqs) + 1)), (
        f"gaps: {sorted(set(range(1, max(seqs) + 1)) - set(seqs))[:10]}"
    )
    return len(seqs)


def start_agent(  # type: ignore[no-untyped-def]
    broker, compiled, signing_keys, video, tmp_path, extra: str = "", mqtt: str = ""
) -> AgentProcess:
    """The real agent on ``broker`` (keepalive 2 s, so a dead link shows quickly); ``mqtt`` adds
    keys to its [mqtt] section, ``extra`` whole sections."""
    if not (tmp_path / "state" / "current").exists():
        install(compiled.package, tmp_path / "state")
    config = write_agent_config(
        tmp_path / "agent.toml", port=broker.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=extra,
    )  # fmt: skip
    config.write_text(config.read_text().replace("[mqtt]\n", f"[mqtt]\nkeepalive = 2\n{mqtt}"))
    return AgentProcess(config, log=tmp_path / f"agent-{time.monotonic_ns()}.log")


class Watcher:
    """A plain cloud client recording every message on some topics, with its size. Its session
    is persistent, so the broker keeps what arrives while the broker restarts."""

    def __init__(self, broker: MosquittoBroker, *filters: str):
        self.messages: list[tuple[str, bytes]] = []
        self.client = connect(
            BrokerAddress(broker.host, broker.port), client_id="watcher", clean_session=False
        )
        self.client.on_message = lambda _c, _u, msg: self.messages.append(
            (msg.topic, bytes(msg.payload))
        )
        Subscriber(self.client).subscribe([(f, 1) for f in filters])

    def on(self, leaf: str) -> list[bytes]:
        return [p for t, p in list(self.messages) if t.endswith(f"/{leaf}")]

    def telemetry(self) -> list[dict]:
        return [json.loads(p) for p in self.on("telemetry") if p]

    def latest(self, key: str) -> list[object]:
        """``[value]`` of ``key`` in the last telemetry message, ``[]`` before there is one."""
        return [t[key] for t in self.telemetry()][-1:]

    def events(self, kind: str) -> list[dict]:
        return [e for e in (json.loads(p) for p in self.on("events")) if e.get("type") == kind]

    def close(self) -> None:
        disconnect(self.client)
