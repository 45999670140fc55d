"""``edgewise fleet``: one line per device from its retained status and telemetry messages."""

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


class FleetView:
    """Latest status and telemetry per device, fed with MQTT messages as they arrive."""

    def __init__(self, topics: Topics | None = None, clock: Callable[[], float] = time.time):
        self._topics = topics or Topics()
        self._clock = clock
        self._devices: dict[str, dict[str, dict[str, Any]]] = {}

    def update(self, topic: str, payload: bytes) -> None:
        """Take one ``devices/{id}/status`` or ``devices/{id}/telemetry`` message; an empty
        payload (a cleared retained message) forgets that part. Anything else is ignored."""
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

    def rows(self) -> list[dict[str, object]]:
        """One dict per device, sorted by id; a value not known is None."""
        now = self._clock()
        rows: list[dict[str, object]] = []
        for device in sorted(self._devices):
            status = self._devices[device].get("status")
            telemetry = self._devices[device].get("telemetry")
            model = _get(status, "model") or _get(telemetry, "model")
            name, version = _text(_get(model, "name")), _text(_get(model, "version"))
            at = _number(_get(telemetry, "at"))
            rows.append(
                {
                    "device": device,
                    "state": _text(_get(status, "state")),
                    "model": " ".join(p for p in (name, version) if p) or None,
                    "source": _text(_get(status, "source", "state")),
                    "deployment": _text(_get(status, "deployment", "state")),
                    "fps": _number(_get(telemetry, "fps")),
                    "p99_ms": _number(_get(telemetry, "latency_ms", "p99")),
                    "queued": _number(_get(telemetry, "results_queued")),
                    "dropped": _number(_get(telemetry, "results_dropped")),
                    "cpu_percent": _number(_get(telemetry, "cpu_percent")),
                    "rss_mb": _number(_get(telemetry, "rss_mb")),
                    "temp_c": _number(_get(telemetry, "soc_temp_c")),
                    "age_s": round(max(now - at, 0.0), 1) if at is not None else None,
                }
            )
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
