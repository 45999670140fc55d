"""``edgewise results``: read results (and deploy events) that devices publish."""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt

from agent.contract import Topics
from agent.contract.broker import BrokerCapabilities

from ..errors import BrokerUnavailable, InputError


class SharedSubscriptionsUnavailable(InputError):
    """``--group`` on a broker whose CONNACK says it has no shared subscriptions (exit 2)."""


class Partition:
    """``--partition i/n``: this consumer keeps the devices whose stable hash (SHA-256 of the
    device id, as a big-endian number, mod ``n``) is ``i``. Every consumer still receives (and
    acknowledges) every device's messages; the others' are dropped before any sink. Unlike a
    shared subscription it works on every broker, and a device always lands on one consumer."""

    def __init__(self, index: int, count: int):
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"partition {index}/{count}: need 0 <= i < n and n >= 1")
        self.index, self.count = index, count

    @classmethod
    def parse(cls, value: str) -> Partition:
        """An argparse type: ``i/n``, e.g. ``0/3``; one line on a bad value."""
        index, slash, count = value.partition("/")
        if not slash or not index.isdigit() or not count.isdigit():
            raise argparse.ArgumentTypeError(f"{value!r} is not i/n (e.g. 0/3)")
        try:
            return cls(int(index), int(count))
        except ValueError as exc:
            problem = f"{value!r}: i must be 0..n-1 and n at least 1"
            raise argparse.ArgumentTypeError(problem) from exc

    def keeps(self, device: str) -> bool:
        digest = hashlib.sha256(device.encode()).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def describe(self) -> str:
        return (
            f"partition {self.index}/{self.count}: devices whose sha256(id) mod {self.count} is "
            f"{self.index}; the other devices' messages are acknowledged and dropped"
        )


class _Item(NamedTuple):
    kind: str  # "results", "events", "invalid", or "refused" (a subscription the broker denied)
    message: dict[str, Any]
    mid: int
    qos: int
    last: bool  # the last item of its MQTT message (a results batch holds many)


class DeviceFeed:
    """Subscribes to one device's (or every device's) results and events — again on every
    reconnect, since a clean session (or a broker that lost a persistent one) forgets them — and
    turns a refused subscription (SUBACK failure) into :class:`BrokerUnavailable` from
    :meth:`next`. With ``manual_ack`` a message is acknowledged only once :meth:`done` says its
    last item was handled: what was received but not handled stays with a persistent session.

    Made before the client connects (``connect(prepare=...)``), it also gets the messages a
    persistent session held while the consumer was away, which arrive right after CONNACK.
    """

    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        device_id: str | None = None,
        share_group: str | None = None,
        manual_ack: bool = False,
        partition: Partition | None = None,
    ):
        """``share_group``: consumers in one group split the results (an MQTT shared
        subscription) instead of each getting them all. ``partition``: only those devices'
        messages come out; the others are acknowledged and counted in ``skipped``."""
        self._inbox: queue.Queue[_Item] = queue.Queue()
        self._client, self._manual_ack = client, manual_ack
        self._topics, self.share_group, self.partition = topics, share_group, partition
        self.skipped = 0  # messages of devices outside the partition
        self.unsupported: str | None = None  # why the broker cannot serve this subscription
        results = topics.results(device_id) if device_id else topics.all_devices("results")
        self._filters = [
            f"$share/{share_group}/{results}" if share_group else results,
            topics.events(device_id) if device_id else topics.all_devices("events"),
        ]
        self.subscribed = threading.Event()  # the first SUBACK came (refused or not)
        self.refused: str | None = None
        self._current: _Item | None = None
        self._held: list[tuple[int, int]] = []  # (mid, qos) handled, not yet acknowledged
        self._mids: set[int] = set()  # our SUBSCRIBE requests, for their SUBACKs
        self._lock = threading.Lock()
        client.manual_ack_set(manual_ack)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._connected_before: Callable[..., object] | None = client.on_connect
        client.on_connect = self._on_connect
        if client.is_connected():
            self._subscribe()

    @property
    def filters(self) -> list[str]:
        return list(self._filters)

    def _subscribe(self) -> None:
        # Under the lock: a SUBACK racing in is matched only once its request id is known.
        with self._lock:
            _, mid = self._client.subscribe([(f, 1) for f in self._filters])
            if mid is not None:
                self._mids.add(mid)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: mqtt.Properties | None,
    ) -> None:
        if self._connected_before is not None:
            self._connected_before(client, userdata, flags, reason_code, properties)
        if reason_code.is_failure:
            return
        if self.share_group and not _shared_available(client, properties):
            self.unsupported = (
                f"the broker says it has no shared subscriptions, so --group "
                f"{self.share_group} cannot split the results; run each consumer with "
                "--partition i/n instead (0/n .. n-1/n)"
            )
            self._inbox.put(_Item("refused", {}, 0, 0, True))
            self.subscribed.set()
            return
        self._subscribe()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, reason_codes: list[mqtt.ReasonCode], _p: object
    ) -> None:
        with self._lock:
            if mid not in self._mids:
                return  # someone else's subscription on this client
            self._mids.discard(mid)
        refused = [
            f"{topic_filter} ({code})"
            for topic_filter, code in zip(self._filters, reason_codes, strict=False)
            if code.is_failure
        ]
        if refused:
            self.refused = ", ".join(refused)
            self._inbox.put(_Item("refused", {"filters": self.refused}, 0, 0, True))
        self.subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind not in ("results", "events") or not self._mine(msg.topic):
            self._ack(msg.mid, msg.qos)
            return
        try:
            message = json.loads(msg.payload)
        except ValueError:
            invalid = {"topic": msg.topic, "payload": msg.payload[:200].hex()}
            self._inbox.put(_Item("invalid", invalid, msg.mid, msg.qos, True))
            return
        # Results travel in batches (a JSON array per message); hand them on one by one.
        items = message if isinstance(message, list) else [message]
        if not items:
            self._ack(msg.mid, msg.qos)
        for i, item in enumerate(items):
            self._inbox.put(_Item(kind, item, msg.mid, msg.qos, i == len(items) - 1))

    def _mine(self, topic: str) -> bool:
        """Whether a message on ``topic`` belongs to this consumer's partition (if any)."""
        if self.partition is None:
            return True
        try:
            device = self._topics.device_of(topic)
        except ValueError:
            return False
        if self.partition.keeps(device):
            return True
        self.skipped += 1
        return False

    def _ack(self, mid: int, qos: int) -> None:
        if self._manual_ack and qos > 0:
            self._client.ack(mid, qos)

    def wait_subscribed(self, timeout: float) -> None:
        """Raises BrokerUnavailable unless the broker granted the subscriptions in time."""
        if not self.subscribed.wait(timeout):
            raise BrokerUnavailable(f"the broker did not confirm the subscription in {timeout:g} s")
        self._raise_if_refused()

    def _raise_if_refused(self) -> None:
        if self.unsupported:
            raise SharedSubscriptionsUnavailable(self.unsupported)
        if self.refused:
            raise BrokerUnavailable(
                f"the broker refused the subscription to {self.refused}; "
                "check its ACL for this client"
            )

    def _get(self, timeout: float) -> _Item | None:
        try:
            item = self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if item.kind == "refused":
            self._raise_if_refused()
        self._current = item
        return item

    @property
    def in_batch(self) -> bool:
        """The item :meth:`next` returned last has more of its message behind it."""
        return self._current is not None and not self._current.last

    @property
    def waiting(self) -> bool:
        """More items are already here (a caller may commit several messages at once)."""
        return not self._inbox.empty()

    def done(self, hold: bool = False) -> None:
        """The item :meth:`next` returned last is handled (written, printed): with
        ``manual_ack``, its message is acknowledged once that was its last item — or, with
        ``hold``, kept for :meth:`release` (after the caller committed several messages)."""
        item, self._current = self._current, None
        if item is not None and item.last:
            if hold:
                self._held.append((item.mid, item.qos))
            else:
                self._ack(item.mid, item.qos)

    def release(self) -> None:
        """Acknowledges the messages :meth:`done` held."""
        held, self._held = self._held, []
        for mid, qos in held:
            self._ack(mid, qos)

    def messages(self, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """(kind, message) pairs — kind is ``results`` or ``events`` — until ``timeout`` passes
        without one."""
        while (item := self._get(timeout)) is not None:
            yield item.kind, item.message

    def next(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The next (kind, message) within ``timeout`` seconds, or None."""
        item = self._get(timeout)
        return (item.kind, item.message) if item is not None else None

    def wait_for(
        self, kind: str, timeout: float, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any] | None:
        """The next message of one kind (and matching ``where``) within ``timeout`` seconds,
        skipping the others."""
        deadline = time.monotonic() + timeout
        while (item := self._get(deadline - time.monotonic())) is not None:
            if item.kind == kind and (where is None or where(item.message)):
                return item.message
        return None


def _shared_available(client: mqtt.Client, properties: mqtt.Properties | None) -> bool:
    """What an MQTT 5 CONNACK says; a 3.1.1 connection cannot tell (True: try)."""
    if client.protocol != mqtt.MQTTv5:
        return True
    return BrokerCapabilities.from_properties(properties, "5").shared_subscription_available


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


_COLUMNS = ("id", "device", "seq", "captured_at", "label", "score")  # then the whole result


class SqliteSink:
    """Results into an SQLite file, one row per id (a second copy is ignored)."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, device TEXT, seq INTEGER, "
            "captured_at REAL, label TEXT, score REAL, json TEXT)"
        )

    def write(self, result: dict[str, Any]) -> None:
        row = (*(result.get(column) for column in _COLUMNS), json.dumps(result))
        self._db.execute("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.commit()
        self._db.close()
