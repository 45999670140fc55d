"""``edgewise fleet``: one line per device from its status and telemetry messages, and from the
fleet summary ``edgewise serve`` keeps retained on one exact topic (``Topics.fleet_state()``).

Some brokers (RabbitMQ 3.10) never deliver retained messages to a wildcard subscription: there
the summary, and telemetry arriving live (every device re-announces its state, model, source
and deployment with each telemetry message), fill the table. What a device's own messages say
wins over the summary.

The summary's payload: ``{"devices": {ID: {FIELD: value}}, "updated_at": seconds}`` where a
device's fields are the table's (``state``, ``model`` as "name version" or {"name", "version"},
``source``, ``deployment``, ``fps``, ``p99_ms``, ``error_rate``, ``queued``, ``dropped``,
``cpu_percent``, ``rss_mb``, ``temp_c``) plus ``interval_s`` (its telemetry interval) and
``at``, the time of its last telemetry (its ``seen_at`` when nothing newer is known); any may be
missing. These figures are for people (fps, ms, %, MB): ``live_figures`` derives them from the
base units telemetry carries (``agent.upstream.telemetry.FIGURES``).

Freshness (one set of rules, used by ``edgewise fleet`` and the console's Board): a telemetry
message of another boot than the status' is ignored; ``seen_at`` is when the device was last
heard from (a live message: its arrival; a retained telemetry: its ``at``; a retained status:
nothing, it may be hours old); ``health`` is ``offline`` when the state says so, else ``stale``
when ``seen_at`` is unknown or older than ``stale_after`` (3 x the telemetry's ``interval_s``,
30 s when unknown), else ``online`` when the state says so, else ``unknown``. The live figures
(``LIVE``) are None unless the health is ``online``: a device is never shown healthy on old
figures.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.contract import Topics

from .table import render, sorted_rows

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

_PARTS = ("status", "telemetry")

DEFAULT_STALE_AFTER = 30.0  # seconds, when the telemetry does not say its interval
STALE_INTERVALS = 3  # a device is stale after missing this many telemetry intervals
HEALTHS = ("online", "stale", "offline", "unknown")
# What a device measures as it runs: shown only while it is online.
LIVE = ("fps", "p99_ms", "error_rate", "queued", "dropped", "cpu_percent", "rss_mb", "temp_c")


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
    number = float(value)
    return number if math.isfinite(number) else None  # 1e999 parses as inf


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _model_text(model: Any) -> str | None:
    if isinstance(model, str):
        return _text(model)
    name, version = _text(_get(model, "name")), _text(_get(model, "version"))
    return " ".join(p for p in (name, version) if p) or None


def this_boot(status: Any, telemetry: Any) -> Any:
    """The telemetry, or None when it is another boot's than the status' (both known): the
    previous boot's retained figures must not sit next to this boot's "online"."""
    boot, telemetry_boot = _text(_get(status, "boot_id")), _text(_get(telemetry, "boot_id"))
    if boot is not None and telemetry_boot is not None and boot != telemetry_boot:
        return None
    return telemetry


def device_fields(status: Any, telemetry: Any) -> dict[str, object]:
    """A row's fields from a device's own status and telemetry (telemetry re-announces the
    status' state, source state and deployment, for brokers that lose the retained status).
    Telemetry of another boot than the status' is left out."""
    telemetry = this_boot(status, telemetry)
    return {
        "state": _text(_get(status, "state")) or _text(_get(telemetry, "state")),
        "model": _model_text(_get(status, "model") or _get(telemetry, "model")),
        "source": _text(_get(status, "source", "state")) or _text(_get(telemetry, "source_state")),
        "deployment": _text(_get(status, "deployment", "state"))
        or _text(_get(telemetry, "deployment", "state")),
        **live_figures(telemetry),
        "interval_s": _number(_get(telemetry, "interval_s")),
        "at": _number(_get(telemetry, "at")),
    }


# Row figure <- (telemetry key in base units, factor to the figure people read, the key agents
# before base units sent: a fleet mid-upgrade still fills its rows).
_FIGURES: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "fps": ("frames_per_second", 1.0, ("fps",)),
    "p99_ms": ("latency_p99_seconds", 1000.0, ("latency_ms", "p99")),
    "error_rate": ("error_ratio", 1.0, ("error_rate",)),
    "queued": ("results_queued", 1.0, ("results_queued",)),
    "dropped": ("results_dropped_total", 1.0, ("results_dropped",)),
    "cpu_percent": ("cpu_ratio", 100.0, ("cpu_percent",)),
    "rss_mb": ("rss_bytes", 1e-6, ("rss_mb",)),
    "temp_c": ("soc_temp_celsius", 1.0, ("soc_temp_c",)),
}


def live_figures(telemetry: Any) -> dict[str, float | None]:
    """``LIVE``'s figures from a telemetry message: fps, ms, %, MB (10^6 bytes) for people,
    from the base units (seconds, bytes, ratios) telemetry carries."""
    out: dict[str, float | None] = {}
    for figure, (key, factor, before) in _FIGURES.items():
        value = _number(_get(telemetry, key))
        if value is None:
            out[figure] = _number(_get(telemetry, *before))
        else:
            out[figure] = round(value * factor, 6) if factor != 1.0 else value
    return out


def stale_limit(interval_s: object, stale_after: float | None = None) -> float:
    """Seconds without news after which a device is stale: ``stale_after`` when given, else
    3 x the telemetry's interval, else 30 s."""
    if stale_after is not None:
        return stale_after
    interval = _number(interval_s)
    return STALE_INTERVALS * interval if interval and interval > 0 else DEFAULT_STALE_AFTER


def health(state: object, seen_at: float | None, now: float, limit: float) -> str:
    """One of HEALTHS, by the rules in this module's docstring."""
    if state == "offline":
        return "offline"
    if seen_at is None or now - seen_at > limit:
        return "stale"
    return "online" if state == "online" else "unknown"


def judged(
    fields: dict[str, object], seen_at: float | None, now: float, stale_after: float | None = None
) -> dict[str, object]:
    """``fields`` (``device_fields``'s) with ``health``, ``seen_at`` and ``age_s`` added and the
    live figures blanked unless the device is online."""
    limit = stale_limit(fields.get("interval_s"), stale_after)
    verdict = health(fields.get("state"), seen_at, now, limit)
    out = dict(fields)
    if verdict != "online":
        out.update(dict.fromkeys(LIVE))
    out["health"] = verdict
    out["seen_at"] = seen_at
    out["age_s"] = None if seen_at is None else round(max(now - seen_at, 0.0), 1)
    return out


def heard_at(leaf: str, data: Any, retained: bool, now: float) -> float | None:
    """When this message says the device was last heard from: a live message when it came; a
    retained telemetry its ``at``; any other retained message nothing (it may be hours old)."""
    if not retained:
        return now
    if leaf == "telemetry":
        return _number(_get(data, "at"))
    return None


def latest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def lost_banner(since: float) -> str:
    """The line shown above figures while the broker connection is lost."""
    when = time.strftime("%H:%M:%S", time.localtime(since))
    return f"broker connection lost since {when}; figures below are as of then"


def watch_connection(client: mqtt.Client, changed: Callable[[bool, str | None], None]) -> None:
    """Call ``changed(True, None)`` on every CONNACK accepted and ``changed(False, reason)`` on
    every disconnect, after whatever handlers the client already has (``fleet.mqtt.connect``'s
    handshake): they are wrapped, not replaced."""
    connected_before, disconnected_before = client.on_connect, client.on_disconnect

    def on_connect(*args: Any) -> None:
        if connected_before is not None:
            connected_before(*args)
        reason = args[3] if len(args) > 3 else None
        if reason is not None and getattr(reason, "is_failure", False):
            changed(False, f"the broker refused the connection: {reason}")
        else:
            changed(True, None)

    def on_disconnect(*args: Any) -> None:
        if disconnected_before is not None:
            disconnected_before(*args)
        reason = args[3] if len(args) > 3 else None
        changed(False, str(reason) if reason is not None else None)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect


def _from_summary(entry: Any) -> dict[str, object]:
    """A row's fields from the fleet summary's entry for one device."""
    texts = ("state", "source", "deployment")
    numbers = (*LIVE, "interval_s", "at")
    return {
        **{key: _text(_get(entry, key)) for key in texts},
        "model": _model_text(_get(entry, "model")),
        **{key: _number(_get(entry, key)) for key in numbers},
    }


class FleetView:
    """Latest status and telemetry per device, fed with MQTT messages as they arrive (from
    paho's thread while another thread prints the table)."""

    def __init__(
        self,
        topics: Topics | None = None,
        clock: Callable[[], float] = time.time,
        stale_after: float | None = None,
    ):
        self._topics = topics or Topics()
        self._clock = clock
        self._stale_after = stale_after
        self._lock = threading.Lock()
        self._devices: dict[str, dict[str, dict[str, Any]]] = {}
        self._heard: dict[str, dict[str, float]] = {}  # device -> leaf -> when heard from
        self._summary: dict[str, Any] = {}  # device id -> its entry in the fleet summary
        self._lost_since: float | None = None  # the broker connection is lost since then

    def follow(self, client: mqtt.Client) -> None:
        """Feed this view from ``client`` (its ``on_message``): every device's status and
        telemetry and the fleet summary, subscribed again on every reconnect; the banner while
        the connection is lost. Raises BrokerUnavailable if the subscription is refused."""
        from .mqtt import Subscriber

        filters = [
            (self._topics.all_devices("status"), 1),
            (self._topics.all_devices("telemetry"), 1),
            (self._topics.fleet_state(), 1),
        ]

        def connection(connected: bool, detail: str | None) -> None:
            self.broker(connected, detail)
            if connected:  # a clean session forgot the subscriptions
                client.subscribe(filters)

        client.on_message = lambda _c, _u, msg: self.update(
            msg.topic, bytes(msg.payload), bool(msg.retain)
        )
        watch_connection(client, connection)
        Subscriber(client).subscribe(filters)

    def broker(self, connected: bool, _detail: str | None = None) -> None:
        """The connection to the broker came back or was lost (``watch_connection``)."""
        with self._lock:
            if connected:
                self._lost_since = None
            elif self._lost_since is None:
                self._lost_since = self._clock()

    def update(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Take one ``devices/{id}/status`` or ``devices/{id}/telemetry`` message, or the fleet
        summary; an empty payload (a cleared retained message) forgets that part. Anything else
        is ignored. ``retained``: the broker kept it (it tells nothing of when it was sent)."""
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
        with self._lock:
            if not payload:
                self._forget(device, leaf)
                return
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(data, dict):
            with self._lock:
                self._devices.setdefault(device, {})[leaf] = data
                heard = self._heard.setdefault(device, {})
                when = heard_at(leaf, data, retained, self._clock())
                if leaf == "telemetry":  # the newest telemetry tells, whatever came before
                    heard.pop(leaf, None)
                if when is not None:
                    heard[leaf] = max(when, heard.get(leaf, when))

    def _forget(self, device: str, leaf: str) -> None:
        parts = self._devices.get(device, {})
        parts.pop(leaf, None)
        self._heard.get(device, {}).pop(leaf, None)
        if not parts:
            self._devices.pop(device, None)
            self._heard.pop(device, None)

    def _take_summary(self, payload: bytes) -> None:
        """The fleet summary replaces the previous one; an unreadable one is ignored."""
        try:
            data = json.loads(payload) if payload else {"devices": {}}
        except (ValueError, UnicodeDecodeError):
            return
        devices = _get(data, "devices")
        if isinstance(devices, dict):
            summary = {str(k): v for k, v in devices.items() if isinstance(v, dict)}
            with self._lock:
                self._summary = summary

    def rows(self) -> list[dict[str, object]]:
        """One dict per device, sorted by id; a value not known is None. A device's own
        messages win; the fleet summary fills what they leave unknown. Each row has the
        freshness fields (``health``, ``seen_at``, ``age_s``; see the module's docstring)."""
        now = self._clock()
        rows: list[dict[str, object]] = []
        with self._lock:
            for device in sorted(self._devices.keys() | self._summary.keys()):
                rows.append({"device": device, **self._row(device, now)})
        return rows

    def _row(self, device: str, now: float) -> dict[str, object]:
        parts = self._devices.get(device, {})
        status, telemetry = parts.get("status"), parts.get("telemetry")
        own = device_fields(status, telemetry)
        summary = _from_summary(self._summary.get(device))
        fields = {k: v if v is not None else summary[k] for k, v in own.items()}
        heard = self._heard.get(device, {})
        telemetry_heard = heard.get("telemetry") if this_boot(status, telemetry) else None
        # The summary's ``at`` is its device's last telemetry, whenever the summary came.
        seen_at = latest(heard.get("status"), telemetry_heard, _number(summary["at"]))
        row = judged(fields, seen_at, now, self._stale_after)
        for internal in ("at", "interval_s"):
            row.pop(internal)
        return row

    def banner(self) -> str | None:
        """``lost_banner`` while the broker connection is lost, else None."""
        since = self.lost_since()
        return None if since is None else lost_banner(since)

    def lost_since(self) -> float | None:
        """When the broker connection was lost, while it is; else None."""
        with self._lock:
            return self._lost_since

    def table(self, colour: bool = False, sort: str | None = None, reverse: bool = False) -> str:
        """``rows()`` sorted by the column ``sort`` as a fixed-width text table
        (``table.render``), with the banner line while the broker connection is lost."""
        return render(sorted_rows(self.rows(), sort, reverse), self.banner(), colour)
