"""The fleet summary ``edgewise serve`` keeps retained on ``{root}/v1/fleet/state``: one row per
device folded from its retained status and telemetry (the same rows as ``edgewise fleet``).

The payload is JSON: ``{"schema": 1, "at": UNIX_SECONDS, "devices": [ROW, ...]}``, rows sorted
by device id, each with the keys of ``FleetView.rows()`` but ``age_s`` (it would change every
second); ``telemetry_at`` (the telemetry's own ``at``) is there instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.contract import PayloadError, Topics, parse_json

from .view import FleetView

SCHEMA = 1


class FleetState:
    """Status and telemetry messages in, a summary out; safe to feed from paho's thread while
    another thread reads it."""

    def __init__(self, topics: Topics | None = None, clock: Callable[[], float] = time.time):
        self._view = FleetView(topics)
        self._telemetry_at: dict[str, float | None] = {}
        self._topics = topics or Topics()
        self._clock = clock
        self._lock = threading.Lock()
        self._version = 0  # bumped by every message that changes a row

    @property
    def version(self) -> int:
        """Changes whenever the summary does; compare it to decide whether to publish."""
        with self._lock:
            return self._version

    def update(self, topic: str, payload: bytes) -> bool:
        """Takes one ``devices/{id}/status`` or ``/telemetry`` message (empty: that part is
        forgotten); True when the summary changed."""
        with self._lock:
            before = self._rows()
            self._view.update(topic, payload)
            self._note_at(topic, payload)
            changed = self._rows() != before
            if changed:
                self._version += 1
            return changed

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"schema": SCHEMA, "at": round(self._clock(), 3), "devices": self._rows()}

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @staticmethod
    def decode(payload: bytes) -> dict[str, Any]:
        """A published summary as a dict; PayloadError when it is not one."""
        data = parse_json(payload)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise PayloadError(f"not a fleet state of schema {SCHEMA}")
        devices = data.get("devices")
        if not isinstance(devices, list) or not all(
            isinstance(row, dict) and isinstance(row.get("device"), str) for row in devices
        ):
            raise PayloadError("a fleet state's devices must be a list of rows with a device id")
        return data

    def _note_at(self, topic: str, payload: bytes) -> None:
        if not topic.endswith("/telemetry"):
            return
        try:
            device = self._topics.device_of(topic)
            at = parse_json(payload).get("at") if payload else None
        except (ValueError, AttributeError, PayloadError):
            return
        good = isinstance(at, (int, float)) and not isinstance(at, bool)
        self._telemetry_at[device] = float(at) if good and at is not None else None

    def _rows(self) -> list[dict[str, object]]:
        rows = []
        for row in self._view.rows():
            row.pop("age_s", None)
            row["telemetry_at"] = self._telemetry_at.get(str(row["device"]))
            rows.append(row)
        return rows
