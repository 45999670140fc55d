"""The fleet summary ``edgewise serve`` keeps retained on ``{root}/v1/fleet/state``, folded from
every device's retained status and telemetry; ``edgewise fleet`` (``view.FleetView``) reads it
where a broker does not deliver retained messages to wildcard subscriptions.

The payload (the format ``view.py`` documents): ``{"devices": {ID: {FIELD: value}},
"updated_at": UNIX_SECONDS}``, a device's fields those of ``edgewise fleet``'s table (``state``,
``model`` as "name version", ``source``, ``deployment``, ``fps``, ``p99_ms``, ``queued``,
``dropped``, ``cpu_percent``, ``rss_mb``, ``temp_c``, ``error_rate``: the figures people read,
``view.live_figures`` derives them from telemetry's base units), ``interval_s`` (its
telemetry interval) and ``at`` (its last telemetry's time), each left out when unknown. A
telemetry message of another boot than the status' is left out (``view.device_fields``); the
live figures are the device's last, whatever its state: readers judge freshness themselves.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.contract import PayloadError, Topics, parse_json

from .view import device_fields

_PARTS = ("status", "telemetry")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a figure")  # NaN and Infinity: never into the summary


class FleetState:
    """Status and telemetry messages in, the summary out; safe to feed from paho's thread while
    another thread reads it."""

    def __init__(self, topics: Topics | None = None, clock: Callable[[], float] = time.time):
        self._topics = topics or Topics()
        self._clock = clock
        self._parts: dict[str, dict[str, Any]] = {}  # device -> {"status": ..., "telemetry": ...}
        self._entries: dict[str, dict[str, object]] = {}
        self._lock = threading.Lock()
        self._version = 0  # bumped by every message that changes an entry

    @property
    def version(self) -> int:
        """Changes whenever the summary does; compare it to decide whether to publish."""
        with self._lock:
            return self._version

    def update(self, topic: str, payload: bytes) -> bool:
        """Takes one ``devices/{id}/status`` or ``/telemetry`` message (empty: that part is
        forgotten; not a JSON object: ignored); True when the summary changed."""
        try:
            device = self._topics.device_of(topic)
        except ValueError:
            return False
        leaf = topic.rsplit("/", 1)[-1]
        if leaf not in _PARTS:
            return False
        data = None
        if payload:
            try:
                # Plain json.loads, at a quarter of parse_json's cost per message: the summary
                # keeps only the fields device_fields reads, each type- and finite-checked there.
                data = json.loads(payload, parse_constant=_no_constant)
            except (ValueError, UnicodeDecodeError, RecursionError):
                return False
            if not isinstance(data, dict):
                return False
        with self._lock:
            return self._fold(device, leaf, data)

    def _fold(self, device: str, leaf: str, data: dict[str, Any] | None) -> bool:
        parts = self._parts.setdefault(device, {})
        if data is None:
            parts.pop(leaf, None)
        else:
            parts[leaf] = data
        entry = None
        if parts:
            fields = device_fields(parts.get("status"), parts.get("telemetry"))
            entry = {key: value for key, value in fields.items() if value is not None}
        else:
            del self._parts[device]
        if entry == self._entries.get(device):
            return False
        if entry is None:
            del self._entries[device]
        else:
            self._entries[device] = entry
        self._version += 1
        return True

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            devices = {device: dict(entry) for device, entry in sorted(self._entries.items())}
        return {"devices": devices, "updated_at": round(self._clock(), 3)}

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @staticmethod
    def decode(payload: bytes) -> dict[str, Any]:
        """A published summary as a dict; PayloadError when it is not one."""
        data = parse_json(payload)
        devices = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(devices, dict) or not all(isinstance(v, dict) for v in devices.values()):
            raise PayloadError("not a fleet state: devices must map each device id to its fields")
        return data
