"""The end-to-end hostile run, shared by tests/test_hostile.py and bench/hostile.py: a real agent
on a real Mosquitto (1 MiB max_packet_size, as deploy/mosquitto/mosquitto.conf ships), a
cloud-side recorder of everything the device says, the corpus published at it, then a valid
deployment, and the figures issue 12 sets goals for."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hostile import EVENT_MAX, REASON_MAX, Payload, digest

from agent.contract import Package, Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.fleet.push import publish_blobs

MIB = 1024 * 1024
CAP = MIB
CAPPED = f"max_packet_size {CAP}\n"
RSS_GOAL_MB = 200.0
GAP_GOAL_S = 1.0
# The deploy budgets of the run: downloads that never complete give up after fetch_timeout;
# max_model_bytes stays at the shipped default (512 MiB), so a 500 MB manifest is not refused
# for its size alone.
DEPLOY = """
[deploy]
fetch_timeout = 3
probe_timeout = 30
probation_s = 0
"""
TERMINAL = ("active", "rejected", "rolled_back")


def capped_broker(persistent: bool = False) -> MosquittoBroker:
    return MosquittoBroker(extra_config=CAPPED, persistent=persistent).start()


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.25) -> bool:
    """For state with nothing to wait on (another process's files): look every ``every`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


class Recorder:
    """Everything one device publishes (results, events, status), with arrival times and sizes."""

    def __init__(self, broker: MosquittoBroker, topics: Topics, device: str):
        self.client = connect(BrokerAddress(broker.host, broker.port))
        self._cond = threading.Condition()
        self.published_at: dict[str, float] = {}  # result id → its published_at
        self.seqs: list[int] = []
        self.result_bytes: list[int] = []  # per result, its share of the batch it came in
        self.arrivals: list[float] = []  # local time each results message arrived
        self.events: list[tuple[float, int, dict[str, Any]]] = []
        self.largest_event = self.largest_status = 0
        self.invalid: list[str] = []  # messages that were not JSON
        self._kinds = {topics.results(device): "results", topics.events(device): "events",
                       topics.status(device): "status"}  # fmt: skip
        self.client.on_message = self._on_message
        Subscriber(self.client).subscribe([(t, 1) for t in self._kinds])

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        kind, size, now = self._kinds.get(msg.topic), len(msg.payload), time.time()
        try:
            body = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            body = None
            self.invalid.append(f"{kind}: {size} bytes, not JSON ({digest(bytes(msg.payload))})")
        with self._cond:
            if kind == "results" and isinstance(body, list):
                self.arrivals.append(now)
                for result in body:
                    self.published_at.setdefault(result["id"], result["published_at"])
                    self.seqs.append(result["seq"])
                    self.result_bytes.append(size // len(body))
            elif kind == "events":
                self.largest_event = max(self.largest_event, size)
                self.events.append((now, size, body if isinstance(body, dict) else {}))
            elif kind == "status":
                self.largest_status = max(self.largest_status, size)
            self._cond.notify_all()

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(condition, timeout)

    def deployment(self, version: str) -> list[str]:
        """Deployment states reported so far for a model version, in order."""
        with self._cond:
            deployments = [e for _, _, e in self.events if e.get("type") == "deployment"]
        return [e.get("state", "?") for e in deployments
                if (e.get("model") or {}).get("version") == version]  # fmt: skip

    def results_since(self, start: float) -> list[float]:
        with self._cond:
            return sorted(t for t in self.published_at.values() if t >= start)

    def close(self) -> None:
        disconnect(self.client)


def serving_gap(recorder: Recorder, start: float, end: float) -> float:
    """Longest stretch in [start, end] without a result produced (by their published_at)."""
    times = [start, *(t for t in recorder.results_since(start) if t <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


def arrival_gap(recorder: Recorder, start: float, end: float) -> float:
    times = [start, *(t for t in recorder.arrivals if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


def reason_troubles(recorder: Recorder, labels: dict[str, str]) -> list[str]:
    """Events whose reason is too long, named with the payload the reason's digest points to."""
    out = []
    for _, size, event in recorder.events:
        reason = event.get("reason")
        if isinstance(reason, str) and len(reason) > REASON_MAX:
            hit = next((label for d, label in labels.items() if d in reason), "not named")
            out.append(f"{len(reason)}-char reason ({size}-byte event; payload {hit}): "
                       f"{reason[:100]!r}")  # fmt: skip
        elif size > EVENT_MAX:
            out.append(f"{size}-byte event: {json.dumps(event)[:100]}")
    return out


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (128 if n else 0))
        if not n:
            return bytes(out)


@dataclass
class Publisher:
    """Publishes payloads as an attacker would: QoS 1, retained where the payload says; one over
    the broker's packet cap goes out on a throwaway connection (the broker drops that client)."""

    broker: MosquittoBroker
    cap: int | None = CAP
    refused: int = 0
    sent: int = 0
    by_topic_kind: dict[str, int] = field(default_factory=dict)
    _client: mqtt.Client | None = None
    _pending: list[mqtt.MQTTMessageInfo] = field(default_factory=list)
    _published: dict[str, str] = field(default_factory=dict)  # topic → digest of what it holds

    def __post_init__(self) -> None:
        self._client = connect(BrokerAddress(self.broker.host, self.broker.port))

    def _over_cap(self, topic: str, data: bytes) -> bool:
        return self.cap is not None and len(data) + len(topic) + 16 > self.cap

    def _send(self, topic: str, data: bytes, retain: bool) -> None:
        if self._over_cap(topic, data):
            self.refused += 1
            self._send_over_cap(topic, data, retain)
            return
        assert self._client is not None
        self._pending.append(self._client.publish(topic, data, qos=1, retain=retain))
        while len(self._pending) > 32:  # a window, as a push keeps one
            self._pending.pop(0).wait_for_publish(30)

    def _send_over_cap(self, topic: str, data: bytes, retain: bool) -> None:
        """Raw MQTT 3.1.1 on a connection of its own (paho would wait on a socket the broker has
        cut): CONNECT, then the PUBLISH, which the broker refuses once it reads the length."""
        client_id = b"hostile-oversize"
        connect_body = (
            b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
        )
        name = topic.encode()
        publish_body = len(name).to_bytes(2, "big") + name + data
        with socket.create_connection((self.broker.host, self.broker.port), timeout=10) as sock:
            sock.sendall(b"\x10" + _remaining_length(len(connect_body)) + connect_body)
            sock.recv(4)  # CONNACK
            with contextlib.suppress(OSError):  # the broker may reset before the last byte
                sock.sendall(bytes([0x30 | retain]) + _remaining_length(len(publish_body)))
                sock.sendall(publish_body)
                sock.recv(1)  # returns b"" once the broker has closed the connection

    def publish(self, payload: Payload) -> None:
        for topic, data in payload.before:  # supporting chunks, once each
            if self._published.get(topic) != digest(data):
                self._send(topic, data, retain=True)
                self._published[topic] = digest(data)
        self._send(payload.topic, payload.data, payload.retain)
        self._published[payload.topic] = digest(payload.data)
        self.sent += 1
        kind = payload.topic.split("/")[2] if payload.topic.count("/") > 2 else payload.topic
        self.by_topic_kind[kind] = self.by_topic_kind.get(kind, 0) + 1

    def flush(self) -> None:
        while self._pending:
            self._pending.pop(0).wait_for_publish(30)

    def push(self, package: Package, topic: str, topics: Topics) -> None:
        """A real deployment: every chunk, then the signed manifest (what `edgewise push` does)."""
        assert self._client is not None
        self.flush()
        publish_blobs(self._client, topics, package, timeout=30)
        self._client.publish(topic, package.envelope, qos=1, retain=True).wait_for_publish(30)

    def clear(self, topics: list[str]) -> None:
        """Empty retained messages: leave no hostile payload on the broker for the next run."""
        for topic in topics:
            self._send(topic, b"", retain=True)
        self.flush()

    def close(self) -> None:
        self.flush()
        if self._client is not None:
            disconnect(self._client)


def proc_status(pid: int, field_name: str) -> float | None:
    """A /proc/PID/status figure in MB (VmHWM: the process's resident high-water mark)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssWatch(threading.Thread):
    """Keeps the last VmHWM seen, so a figure survives the process's exit."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, proc_status(self.pid, "VmHWM") or 0.0)


def tree_bytes(root: Path, skip: tuple[str, ...] = ()) -> int:
    """Apparent size of every file under ``root`` (a sparse file counts at its full length: a
    500 MB preallocation is a promise the disk may not keep)."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.startswith(skip):
            total += path.stat().st_size
    return total
