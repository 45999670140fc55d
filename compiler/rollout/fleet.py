"""What the rollout controller knows of the fleet, fed from paho's thread: each device's retained
status and telemetry (online or not, its groups, its last deployment step, what it serves), and
the events and command replies that came since the controller last looked."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from agent.contract import PayloadError, Topics, parse_json

LEAVES = ("status", "telemetry", "events", "replies")
MAX_PENDING = 100_000  # events waiting for the controller's thread; the oldest go first


@dataclass(frozen=True)
class Message:
    device: str
    leaf: str  # "events" or "replies"
    data: dict[str, Any]


class Fleet:
    """Safe to feed from paho's thread while the controller's thread reads it."""

    def __init__(self, topics: Topics):
        self.topics = topics
        self._lock = threading.Lock()
        self.changed = threading.Event()  # set by every message: the controller looks again
        self._status: dict[str, dict[str, Any]] = {}
        self._telemetry: dict[str, dict[str, Any]] = {}
        self._pending: deque[Message] = deque(maxlen=MAX_PENDING)

    def filters(self) -> list[tuple[str, int]]:
        return [(self.topics.all_devices(leaf), 1) for leaf in LEAVES]

    def on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            device = self.topics.device_of(message.topic)
        except ValueError:
            return
        leaf = message.topic.rsplit("/", 1)[-1]
        data: Any = None
        if message.payload:
            try:
                data = parse_json(bytes(message.payload))
            except PayloadError:
                return
            if not isinstance(data, dict):
                return
        with self._lock:
            if leaf in ("status", "telemetry"):
                parts = self._status if leaf == "status" else self._telemetry
                if data is None:  # a cleared retained status: the device was removed
                    parts.pop(device, None)
                else:
                    parts[device] = data
            elif leaf in ("events", "replies") and data is not None:
                self._pending.append(Message(device, leaf, data))
        if leaf != "telemetry":  # telemetry only repeats the status: no reason to look at once
            self.changed.set()

    def drain(self) -> list[Message]:
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    def members(self, target: str) -> list[str]:
        """Every device seen that ``target`` (device:ID, group:G or all) takes."""
        kind, _, ident = target.partition(":")
        with self._lock:
            seen = set(self._status) | set(self._telemetry)
            if kind == "device":
                return [ident] if ident in seen else []
            if kind == "group":
                return sorted(d for d in seen if ident in self._groups(d))
            return sorted(seen)

    def _groups(self, device: str) -> list[str]:
        for part in (self._status.get(device), self._telemetry.get(device)):
            groups = (part or {}).get("groups")
            if isinstance(groups, list):
                return [str(g) for g in groups]
        return []

    def online(self, device: str) -> bool:
        """Its retained status says online (the last will says otherwise); with no status (a
        broker that does not deliver retained messages), telemetry means online."""
        with self._lock:
            status = self._status.get(device)
            if status is not None:
                return status.get("state") == "online"
            return device in self._telemetry

    def deployment(self, device: str) -> dict[str, Any] | None:
        """Its last deployment step, as its retained status (or telemetry) repeats it."""
        with self._lock:
            for part in (self._status.get(device), self._telemetry.get(device)):
                step = (part or {}).get("deployment")
                if isinstance(step, dict):
                    return step
        return None

    def serving(self, device: str) -> dict[str, Any] | None:
        with self._lock:
            status = self._status.get(device) or self._telemetry.get(device) or {}
        model = status.get("model")
        return model if isinstance(model, dict) else None
