"""``edgewise results``: read results (and deploy events) that devices publish."""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.contract import Topics


class DeviceFeed:
    """Subscribes to one device's (or every device's) results and events."""

    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        device_id: str | None = None,
        share_group: str | None = None,
    ):
        """``share_group``: consumers in one group split the results (an MQTT shared
        subscription) instead of each getting them all."""
        self._inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._client = client
        results = topics.results(device_id) if device_id else topics.all_devices("results")
        self._filters = [
            f"$share/{share_group}/{results}" if share_group else results,
            topics.events(device_id) if device_id else topics.all_devices("events"),
        ]
        self.subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_args: self.subscribed.set()
        client.subscribe([(topic_filter, 1) for topic_filter in self._filters])

    @property
    def filters(self) -> list[str]:
        return list(self._filters)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind not in ("results", "events"):
            return
        try:
            message = json.loads(msg.payload)
        except ValueError:
            self._inbox.put(("invalid", {"topic": msg.topic, "payload": msg.payload[:200].hex()}))
            return
        # Results travel in batches (a JSON array per message); hand them on one by one.
        for item in message if isinstance(message, list) else [message]:
            self._inbox.put((kind, item))

    def messages(self, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """(kind, message) pairs — kind is ``results`` or ``events`` — until ``timeout`` passes
        without one."""
        while True:
            try:
                yield self._inbox.get(timeout=timeout)
            except queue.Empty:
                return

    def next(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The next (kind, message) within ``timeout`` seconds, or None."""
        try:
            return self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def wait_for(
        self, kind: str, timeout: float, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any] | None:
        """The next message of one kind (and matching ``where``) within ``timeout`` seconds,
        skipping the others."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                got, message = self._inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if got == kind and (where is None or where(message)):
                return message
        return None


class IdleTimer:
    """``edgewise results --timeout``: the time left until ``timeout`` seconds pass with nothing
    new. It runs from creation, so a feed that never brings anything still ends on time; only
    ``renew`` (a new result) restarts it — events and duplicates do not keep a consumer alive."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic):
        self._timeout, self._clock = timeout, clock
        self._deadline = clock() + timeout

    def renew(self) -> None:
        self._deadline = self._clock() + self._timeout

    def remaining(self) -> float:
        return max(self._deadline - self._clock(), 0.0)

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0


def format_result(result: dict[str, Any]) -> str:
    latency = result.get("latency_ms", {})
    model = result.get("model", {})
    return (
        f"{result.get('device')} #{result.get('seq')} frame {result.get('frame')}: "
        f"{result.get('label')} ({result.get('score', 0):.3f})  "
        f"infer {latency.get('inference', 0):.2f} ms  {model.get('name')} {model.get('version')}"
    )


class Deduper:
    """Remembers the last ``keep`` result ids: at-least-once delivery made exactly-once."""

    def __init__(self, keep: int = 1_000_000):
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._keep = keep
        self.duplicates = 0

    def first_time(self, result_id: str) -> bool:
        if result_id in self._seen:
            self.duplicates += 1
            return False
        self._seen[result_id] = None
        if len(self._seen) > self._keep:
            self._seen.popitem(last=False)
        return True


class SqliteSink:
    """Results into an SQLite file, one row per id (a second copy is ignored)."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, device TEXT, seq INTEGER, "
            "captured_at REAL, label TEXT, score REAL, json TEXT)"
        )

    def write(self, result: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                result.get("id"), result.get("device"), result.get("seq"),
                result.get("captured_at"), result.get("label"), result.get("score"),
                json.dumps(result),
            ),
        )  # fmt: skip

    def close(self) -> None:
        self._db.commit()
        self._db.close()
