"""``edgewise fleet``: one line per device from its status and telemetry messages, and from the
fleet summary ``edgewise serve`` keeps retained on one exact topic (``Topics.fleet_state()``).

Some brokers (RabbitMQ 3.10) never deliver retained messages to a wildcard subscription: there
the summary, and telemetry arriving live (every device re-announces its state, model, source
and deployment with each telemetry message), fill the table. What a device's own messages say
wins over the summary.

The summary's payload: ``{"devices": {ID: {FIELD: value}}, "updated_at": seconds}`` where a
device's fields are the table's (``state``, ``model`` as "name version" or {"name", "version"},
``source``, ``deployment``, ``fps``, ``p99_ms``, ``queued``, ``dropped``, ``cpu_percent``,
``rss_mb``, ``temp_c``) plus ``at``, the time of its last telemetry (for AGE_S); any may be
missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from agent.contract import Topics

_PARTS = ("status", "telemetry")

# (row key, heading, format for numbers); None format = text, left-aligned
_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("device", "DEVICE", None),
    ("state", "STATE", None),
    ("model", "MODEL", None),
    ("source", "SOURCE", None),
    ("deployment", "DEPLOY", None),
    ("fps", "FPS", "{:.1f}"),
    ("p99_ms", "P99_MS", "{:.1f}"),
    ("queued", "QUEUED", "{:.0f}"),
    ("dropped", "DROPPED", "{:.0f}"),
    ("cpu_percent", "CPU%", "{:.1f}"),
    ("rss_mb", "RSS_MB", "{:.0f}"),
    ("temp_c", "TEMP_C", "{:.1f}"),
    ("age_s", "AGE_S", "{:.0f}"),
)


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    # bool is an int subclass but never a figure here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _model_text(model: Any) -> str | None:
    if isinstance(model, str):
        return _text(model)
    name, version = _text(_get(model, "name")), _text(_get(model, "version"))
    return " ".join(p for p in (name, version) if p) or None


def device_fields(status: Any, telemetry: Any) -> dict[str, object]:
    """A row's fields from a device's own status and telemetry (telemetry re-announces the
    status' state, source state and deployment, for brokers that lose the retained status)."""
    return {
        "state": _text(_get(status, "state")) or _text(_get(telemetry, "state")),
        "model": _model_text(_get(status, "model") or _get(telemetry, "model")),
        "source": _text(_get(status, "source", "state")) or _text(_get(telemetry, "source_state")),
        "deployment": _text(_get(status, "deployment", "state"))
        or _text(_get(telemetry, "deployment", "state")),
        "fps": _number(_get(telemetry, "fps")),
        "p99_ms": _number(_get(telemetry, "latency_ms", "p99")),
        "queued": _number(_get(telemetry, "results_queued")),
        "dropped": _number(_get(telemetry, "results_dropped")),
        "cpu_percent": _number(_get(telemetry, "cpu_percent")),
        "rss_mb": _number(_get(telemetry, "rss_mb")),
        "temp_c": _number(_get(telemetry, "soc_temp_c")),
        "at": _number(_get(telemetry, "at")),
    }


def _from_summary(entry: Any) -> dict[str, object]:
    """A row's fields from the fleet summary's entry for one device."""
    texts = ("state", "source", "deployment")
    numbers = ("fps", "p99_ms", "queued", "dropped", "cpu_percent", "rss_mb", "temp_c", "at")
    return {
        **{key: _text(_get(entry, key)) for key in texts},
        "model": _model_text(_get(entry, "model")),
        **{key: _number(_get(entry, key)) for key in numbers},
    }


class FleetView:
    """Latest status and telemetry per device, fed with MQTT messages as they arrive."""

    def __init__(self, topics: Topics | None = None, clock: Callable[[], float] = time.time):
        self._topics = topics or Topics()
        self._clock = clock
        self._devices: dict[str, dict[str, dict[str, Any]]] = {}
        self._summary: dict[str, Any] = {}  # device id -> its entry in the fleet summary

    def update(self, topic: str, payload: bytes) -> None:
        """Take one ``devices/{id}/status`` or ``devices/{id}/telemetry`` message, or the fleet
        summary; an empty payload (a cleared retained message) forgets that part. Anything else
        is ignored."""
        if topic == self._topics.fleet_state():
            self._take_summary(payload)
            return
        try:
            device = self._topics.device_of(topic)
        except ValueError:
            return
        leaf = topic.rsplit("/", 1)[-1]
        if leaf not in _PARTS:
            return
        if not payload:
            parts = self._devices.get(device, {})
            parts.pop(leaf, None)
            if not parts:
                self._devices.pop(device, None)
            return
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(data, dict):
            self._devices.setdefault(device, {})[leaf] = data

    def _take_summary(self, payload: bytes) -> None:
        """The fleet summary replaces the previous one; an unreadable one is ignored."""
        try:
            data = json.loads(payload) if payload else {"devices": {}}
        except (ValueError, UnicodeDecodeError):
            return
        devices = _get(data, "devices")
        if isinstance(devices, dict):
            self._summary = {str(k): v for k, v in devices.items() if isinstance(v, dict)}

    def rows(self) -> list[dict[str, object]]:
        """One dict per device, sorted by id; a value not known is None. A device's own
        messages win; the fleet summary fills what they leave unknown."""
        now = self._clock()
        rows: list[dict[str, object]] = []
        for device in sorted(self._devices.keys() | self._summary.keys()):
            parts = self._devices.get(device, {})
            own = device_fields(parts.get("status"), parts.get("telemetry"))
            summary = _from_summary(self._summary.get(device))
            fields = {k: v if v is not None else summary[k] for k, v in own.items()}
            at = fields.pop("at")
            age = round(max(now - at, 0.0), 1) if isinstance(at, float) else None
            rows.append({"device": device, **fields, "age_s": age})
        return rows

    def table(self) -> str:
        """``rows()`` as a fixed-width text table; ``-`` where a value is not known."""
        cells = [[heading for _, heading, _ in _COLUMNS]]
        for row in self.rows():
            line = []
            for key, _, fmt in _COLUMNS:
                value = row.get(key)
                if value is None:
                    line.append("-")
                elif fmt is not None and isinstance(value, float):
                    line.append(fmt.format(value))
                else:
                    line.append(str(value))
            cells.append(line)
        widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
        return "\n".join(
            "  ".join(
                cell.ljust(width) if fmt is None else cell.rjust(width)
                for cell, width, (_, _, fmt) in zip(line, widths, _COLUMNS, strict=True)
            ).rstrip()
            for line in cells
        )
