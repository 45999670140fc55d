"""The console's picture of the fleet: every device message folded, rows with health computed
when asked (``compiler.fleet.view``'s freshness rules), a device's detail, and version numbers
that tell a reader what changed since it last looked.

Cheap by design: paho's thread parses each payload once and keeps the raw dict; rows are built
only when read, and the part of a row that does not depend on the time is cached per device
until that device's status, telemetry or shadow changes.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from agent.contract import Topics

from ..fleet.view import (
    HEALTHS,
    LIVE,
    device_fields,
    health,
    heard_at,
    latest,
    stale_limit,
    this_boot,
)

LEAVES = ("status", "telemetry", "events", "replies", "results", "snapshot")
_RETAINED = ("status", "telemetry", "snapshot")  # an empty payload clears these
_JPEG = b"\xff\xd8"
_SHADOW = ("state", "agreement", "agreement_lower", "frames")
_BLANK = dict.fromkeys(LIVE)  # live figures of a device that is not online


@dataclass(frozen=True)
class BoardOptions:
    stale_after: float | None = None  # None: 3 x telemetry interval_s (30 s when unknown)
    keep_events: int = 50
    keep_replies: int = 50
    keep_results: int = 20


@dataclass
class _Device:
    """What one device said: raw dicts, newest first where there are several."""

    options: BoardOptions
    status: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    heard: float | None = None  # the last live message other than telemetry
    telemetry_heard: float | None = None  # the telemetry's (``view.heard_at``)
    events: deque[dict[str, Any]] = field(init=False)
    replies: deque[dict[str, Any]] = field(init=False)
    results: deque[dict[str, Any]] = field(init=False)
    shadow: dict[str, Any] | None = None
    snapshot: tuple[bytes, float, int] | None = None  # JPEG, when it came, board version then
    version: int = 0
    base: dict[str, object] | None = None  # the row's time-independent part; None: recompute
    limit: float = 0.0  # with base: seconds without news before it is stale
    fresh: bool = False  # with base: the telemetry is this boot's

    def __post_init__(self) -> None:
        self.events = deque(maxlen=self.options.keep_events)
        self.replies = deque(maxlen=self.options.keep_replies)
        self.results = deque(maxlen=self.options.keep_results)

    @property
    def empty(self) -> bool:
        return self.status is None and self.telemetry is None and self.snapshot is None


def _decode(leaf: str, payload: bytes) -> Any:
    """The payload as the Board keeps it; None when unreadable for its topic."""
    if leaf == "snapshot":
        return payload if payload.startswith(_JPEG) else None
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if leaf == "results":
        items = data if isinstance(data, list) else [data]
        kept = [item for item in items if isinstance(item, dict)]
        return kept or None
    return data if isinstance(data, dict) else None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class Board:
    """Thread-safe: paho's thread writes (``take``, ``broker``), the aiohttp loop reads."""

    def __init__(
        self,
        topics: Topics,
        options: BoardOptions = BoardOptions(),
        clock: Callable[[], float] = time.time,
    ):
        self._topics, self._options, self._clock = topics, options, clock
        self._prefix = topics.all_devices("x")[: -len("+/x")]  # "{root}/v1/devices/"
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._gone: dict[str, int] = {}  # device -> board version when it was cleared away
        self._version = 0
        self._broker: dict[str, Any] = {"connected": False, "since": None, "detail": None}
        self.ignored = 0  # unreadable payloads on the Board's topics

    @property
    def version(self) -> int:
        """Bumps on every change of anything."""
        with self._lock:
            return self._version

    def _route(self, topic: str) -> tuple[str, str] | None:
        """(device, leaf) of ``{prefix}{id}/{leaf}`` for one of LEAVES; None otherwise."""
        if not topic.startswith(self._prefix):
            return None
        device, _, leaf = topic[len(self._prefix) :].partition("/")
        if not device or leaf not in LEAVES:
            return None
        return device, leaf

    def take(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """One message on ``devices/{id}/{leaf}``; anything else is ignored. An unreadable
        payload is ignored and counted in ``ignored``; an empty one clears a retained part."""
        where = self._route(topic)
        if where is None:
            return
        device, leaf = where
        if not payload:
            if leaf in _RETAINED:
                with self._lock:
                    self._clear(device, leaf)
            return
        data = _decode(leaf, payload)
        now = self._clock()
        with self._lock:
            if data is None:
                self.ignored += 1
                return
            self._fold(device, leaf, data, retained, now)

    def _changed(self, device: str, dev: _Device, detail: bool = True) -> None:
        self._version += 1
        dev.version = self._version
        if detail:
            dev.base = None

    def _clear(self, device: str, leaf: str) -> None:
        dev = self._devices.get(device)
        if dev is None or getattr(dev, leaf) is None:
            return
        setattr(dev, leaf, None)
        if leaf == "telemetry":
            dev.telemetry_heard = None
        self._changed(device, dev)
        if dev.empty:  # nothing retained is left of it: gone from the fleet
            del self._devices[device]
            self._gone[device] = self._version

    def _fold(self, device: str, leaf: str, data: Any, retained: bool, now: float) -> None:
        dev = self._devices.get(device)
        if dev is None:
            dev = self._devices[device] = _Device(self._options)
            self._gone.pop(device, None)
        if leaf == "telemetry":
            dev.telemetry, dev.telemetry_heard = data, heard_at(leaf, data, retained, now)
        else:
            dev.heard = latest(dev.heard, heard_at(leaf, data, retained, now))
        detail = leaf in ("status", "telemetry")
        if leaf == "status":
            dev.status = data
        elif leaf == "events":
            dev.events.appendleft(data)
            if data.get("type") == "shadow":
                dev.shadow, detail = data, True
        elif leaf == "replies":
            dev.replies.appendleft(data)
        elif leaf == "results":
            dev.results.extendleft(data)  # a batch is oldest first: its last ends up first
        elif leaf == "snapshot":
            dev.snapshot = (data, now, self._version + 1)
        self._changed(device, dev, detail)

    def broker(self, connected: bool, detail: str | None = None) -> None:
        """The Feed's connection to the broker: connected, or lost (with why)."""
        with self._lock:
            if self._broker["connected"] == connected and self._broker["detail"] == detail:
                return
            since = self._broker["since"]
            if self._broker["connected"] != connected or since is None:
                since = self._clock()
            self._broker = {"connected": connected, "since": since, "detail": detail}
            self._version += 1

    # --- reading ---------------------------------------------------------------------------

    def _base(self, device: str, dev: _Device) -> dict[str, object]:
        """The row with its time-dependent fields unset, in ROW's order, and ``limit`` (the
        stale limit) kept aside under a key the row drops."""
        if dev.base is None:
            fields = device_fields(dev.status, dev.telemetry)
            telemetry = this_boot(dev.status, dev.telemetry)
            groups = _strings((dev.status or {}).get("groups")) or _strings(
                (telemetry or {}).get("groups")
            )
            shadow = dev.shadow
            dev.base = {
                "device": device,
                "health": None,
                "state": fields["state"],
                "seen_at": None,
                "age_s": None,
                "groups": groups,
                "model": fields["model"],
                "deployment": fields["deployment"],
                "probation": fields["deployment"] == "probation",
                "shadow": {key: shadow.get(key) for key in _SHADOW} if shadow else None,
                **{key: fields[key] for key in LIVE},
            }
            dev.limit = stale_limit(fields["interval_s"], self._options.stale_after)
            dev.fresh = telemetry is not None
        return dev.base

    def _row(self, device: str, dev: _Device, now: float) -> dict[str, object]:
        """ROW at ``now``: ``compiler.fleet.view``'s rules on the cached part (this is what a
        reader pays per device per tick, so it copies one dict and sets three fields)."""
        row = dict(self._base(device, dev))
        seen_at = latest(dev.heard, dev.telemetry_heard if dev.fresh else None)
        verdict = health(row["state"], seen_at, now, dev.limit)
        row["health"], row["seen_at"] = verdict, seen_at
        row["age_s"] = None if seen_at is None else round(max(now - seen_at, 0.0), 1)
        if verdict != "online":
            row.update(_BLANK)
        return row

    def rows(self) -> dict[str, dict[str, Any]]:
        """device -> ROW, at ``clock()``."""
        now = self._clock()
        with self._lock:
            return {device: self._row(device, dev, now) for device, dev in self._devices.items()}

    def row(self, device: str) -> dict[str, Any] | None:
        """One device's ROW at ``clock()`` (a device page's stream reads only its own)."""
        now = self._clock()
        with self._lock:
            dev = self._devices.get(device)
            return self._row(device, dev, now) if dev is not None else None

    def connection(self) -> dict[str, Any]:
        """FLEET's ``broker``: connected, since when, and why not."""
        with self._lock:
            return dict(self._broker)

    def fleet(self) -> dict[str, Any]:
        """FLEET: the broker's state, counts by health and every ROW sorted by device."""
        now = self._clock()
        with self._lock:
            rows = [self._row(d, self._devices[d], now) for d in sorted(self._devices)]
            version, broker = self._version, dict(self._broker)
        counts = dict.fromkeys(HEALTHS, 0)
        for row in rows:
            counts[str(row["health"])] += 1
        return {"now": now, "version": version, "broker": broker, "counts": counts,
                "devices": rows}  # fmt: skip

    def device(self, device: str) -> dict[str, Any] | None:
        """DEVICE: the row and the raw messages behind it; None for a device never heard of."""
        now = self._clock()
        with self._lock:
            dev = self._devices.get(device)
            if dev is None:
                return None
            snapshot = None
            if dev.snapshot is not None:
                jpeg, at, n = dev.snapshot
                url = f"/api/devices/{quote(device, safe='')}/snapshot.jpg?v={n}"
                snapshot = {"at": at, "size": len(jpeg), "url": url}
            return {
                "row": self._row(device, dev, now),
                "status": dev.status,
                "telemetry": this_boot(dev.status, dev.telemetry),
                "events": list(dev.events),
                "replies": list(dev.replies),
                "results": list(dev.results),
                "snapshot": snapshot,
                "shadow": dev.shadow,
            }

    def device_version(self, device: str) -> int:
        """Bumps whenever that device's detail changed (0: never heard of)."""
        with self._lock:
            dev = self._devices.get(device)
            return dev.version if dev is not None else self._gone.get(device, 0)

    def snapshot(self, device: str) -> tuple[bytes, float] | None:
        """The device's last retained JPEG and when it came."""
        with self._lock:
            dev = self._devices.get(device)
            if dev is None or dev.snapshot is None:
                return None
            return dev.snapshot[0], dev.snapshot[1]
