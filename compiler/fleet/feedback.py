"""Devices' own figures fed back into their package's report: the ``feedback`` job of
``edgewise serve --packages DIR``.

When an agent installs a package it publishes a deployment event ``installed`` with what its
probe measured on the board: the backend it chose and that backend's p50/p99 (batch 1). This job
subscribes to every device's events and writes those figures into the package's folder under
DIR, as ``devices.json`` keyed by device id::

    {"cam-7": {"backend": "onnxruntime", "p50_ms": 0.61, "p99_ms": 0.93, "at": "2026-...Z",
               "backends": {...every backend the probe tried...}}}

Beside the manifest, not in it: the manifest is signed, and these figures come after. The file
is replaced atomically, so a reader sees the old or the new one whole. ``on_update`` (given by
the CLI: compiler.compile.report_package.rewrite_page) then rewrites the package's report page,
at most once per ``REWRITE_INTERVAL`` per package.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from agent.contract import ContractError, Topics, read_package

from ..files import write_atomic
from .mqtt import Subscriber

if TYPE_CHECKING:  # serve imports nothing of this module
    from .serve import DeviceTap, ServeOptions

log = logging.getLogger(__name__)

DEVICES_FILE = "devices.json"  # compiler.compile.report_package reads it; the same name there

OnUpdate = Callable[[Path], object]  # the package folder whose devices.json changed
REWRITE_INTERVAL = 2.0  # seconds: a package's page is redrawn at most this often


@dataclass(frozen=True)
class DeviceFigures:
    """What one device measured for one package when it installed it."""

    device: str
    name: str
    version: str
    backend: str | None
    p50_ms: float | None
    p99_ms: float | None
    at: str  # ISO 8601, UTC
    backends: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        entry = {"backend": self.backend, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}
        return {**entry, "at": self.at, **({"backends": self.backends} if self.backends else {})}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def installed_figures(device: str, event: Mapping[str, Any]) -> DeviceFigures | None:
    """The figures of an ``installed`` deployment event; None for any other event."""
    if event.get("type") != "deployment" or event.get("state") != "installed":
        return None
    model = event.get("model")
    if not isinstance(model, Mapping):
        return None
    name, version = model.get("name"), model.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        return None
    at = _number(event.get("at"))
    when = (
        datetime.fromtimestamp(at, timezone.utc) if at is not None else datetime.now(timezone.utc)
    )
    backends = event.get("backends")
    return DeviceFigures(
        device=device,
        name=name,
        version=version,
        backend=event["backend"] if isinstance(event.get("backend"), str) else None,
        p50_ms=_number(event.get("latency_p50_ms")),
        p99_ms=_number(event.get("latency_p99_ms")),
        at=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        backends=backends if isinstance(backends, Mapping) else None,
    )


def package_root(packages: Path, name: str, version: str) -> Path | None:
    """The folder of package ``name`` ``version`` under ``packages``: NAME-VERSION/ as
    ``edgewise compile`` names it, else any folder whose manifest says so."""
    usual = packages / f"{name}-{version}"
    candidates = [usual, *sorted(p.parent for p in packages.glob("*/manifest.json"))]
    for root in candidates:
        if not (root / "manifest.json").is_file():
            continue
        try:
            manifest = read_package(root).manifest
        except (ContractError, OSError):
            continue
        if manifest.name == name and manifest.version == version:
            return root
    return None


def record(packages: Path, figures: DeviceFigures) -> Path | None:
    """Write ``figures`` into their package's ``devices.json``; the package folder, or None
    when ``packages`` holds no such package (a package compiled elsewhere)."""
    root = package_root(packages, figures.name, figures.version)
    if root is None:
        return None
    devices = read_devices(root)
    devices[figures.device] = figures.as_dict()
    write_atomic(root / DEVICES_FILE, json.dumps(devices, indent=2, sort_keys=True))
    return root


def read_devices(root: Path) -> dict[str, Any]:
    """The devices' figures kept in the package folder ``root``; {} when none or unreadable."""
    try:
        known = json.loads((root / DEVICES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


class FeedbackJob:
    """Subscribes (QoS 1) to every device's events and records each ``installed`` one at once
    (a small file, on the MQTT client's thread). The pages are rewritten on the job's own
    thread at most once per ``interval`` per package: a rollout to a thousand devices must not
    draw a thousand pages of charts."""

    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        packages: Path,
        stop: threading.Event,
        on_update: OnUpdate | None = None,
        interval: float = REWRITE_INTERVAL,
    ):
        self._client, self._topics, self._packages = client, topics, packages
        self._stop, self._on_update, self._interval = stop, on_update, interval
        self._lock = threading.Lock()  # one read-modify-write of a devices.json at a time
        self._dirty: set[Path] = set()  # packages whose page is behind their devices.json
        self._filters = [(topics.all_devices("events"), 1)]
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)
        self.recorded = 0

    def start(self) -> FeedbackJob:
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_reconnect
        Subscriber(self._client).subscribe(self._filters)
        self._thread.start()
        return self

    def _on_reconnect(
        self, client: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self._filters)

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            event = json.loads(bytes(message.payload))
            device = self._topics.device_of(message.topic)
        except ValueError:
            return  # not JSON, or not a device's topic: not ours to judge
        figures = installed_figures(device, event) if isinstance(event, dict) else None
        if figures is None:
            return
        try:
            with self._lock:
                root = record(self._packages, figures)
                if root is not None:
                    self._dirty.add(root)
        except Exception:  # one bad package folder must not stop the job
            log.exception("could not record %s's figures for %s", device, figures.name)
            return
        if root is not None:
            self.recorded += 1
            log.info("%s: %s %s figures recorded", device, figures.name, figures.version)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._rewrite()
        self._rewrite()  # what came in since the last round

    def _rewrite(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for root in sorted(dirty):
            if self._on_update is None:
                continue
            try:
                self._on_update(root)
            except Exception:  # a page that cannot be drawn must not stop the job
                log.exception("could not rewrite the report page of %s", root)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        """Nothing held."""


def with_feedback(
    options: ServeOptions, packages: Path | None, on_update: OnUpdate | None = None
) -> ServeOptions:
    """``options`` with the ``feedback`` job added when ``packages`` is given."""
    if packages is None:
        return options

    def factory(
        client: mqtt.Client, serve: ServeOptions, stop: threading.Event, _tap: DeviceTap
    ) -> FeedbackJob:
        return FeedbackJob(client, serve.topics, packages, stop, on_update).start()

    options.jobs["feedback"] = factory
    return options
