"""Periodic health figures of a device: pipeline rates and latencies plus process and SoC state.

``telemetry_message`` builds the payload published on ``devices/{id}/telemetry``;
``TelemetryReporter`` is the thread that sends one every interval; ``PrometheusExporter`` serves
the same figures for scraping when a site prefers pull.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_MB = 1024 * 1024
log = logging.getLogger(__name__)


class ProcessSampler:
    """Samples this process and its host: CPU %, RSS, free disk and SoC temperature."""

    def __init__(self, thermal_root: Path = Path("/sys/class/thermal")):
        self._thermal_root = thermal_root
        self._last_cpu = _cpu_seconds()
        self._last_wall = time.monotonic()

    def sample(self, disk_path: Path) -> dict[str, float | None]:
        """``cpu_percent`` (since the previous sample, or construction; 100 = one core busy),
        ``rss_mb``, ``disk_free_mb`` of ``disk_path`` and ``soc_temp_c`` (None without sensors)."""
        cpu, wall = _cpu_seconds(), time.monotonic()
        elapsed = wall - self._last_wall
        cpu_percent = 100.0 * (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        return {
            "cpu_percent": round(max(cpu_percent, 0.0), 1),
            "rss_mb": round(_rss_bytes() / _MB, 1),
            "disk_free_mb": round(shutil.disk_usage(disk_path).free / _MB, 1),
            "soc_temp_c": self._soc_temp_c(),
        }

    def _soc_temp_c(self) -> float | None:
        readings = []
        for zone in sorted(self._thermal_root.glob("thermal_zone*/temp")):
            try:
                readings.append(int(zone.read_text().strip()) / 1000.0)
            except (OSError, ValueError):
                # A zone whose driver is asleep or broken reads as an error; the others still count.
                continue
        return round(max(readings), 1) if readings else None


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _rss_bytes() -> int:
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # Without /proc only the peak is known; it is the closest figure available.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def telemetry_message(
    *,
    device: str,
    boot_id: str,
    interval_s: float,
    frames: int,
    frames_before: int,
    stages: dict[str, dict[str, float]],
    dropped_frames: int,
    results_queued: int,
    results_dropped: int,
    process: dict[str, float | None],
    model: dict[str, str] | None,
    upstream: Mapping[str, object] | None = None,
    source: Mapping[str, int] | None = None,
    error_rate: float | None = None,
) -> dict[str, object]:
    """The telemetry payload for one interval. ``stages`` is ``StageStats.summary()``;
    ``frames``/``frames_before`` are frame counts now and one interval ago; ``process`` is
    ``ProcessSampler.sample()``; ``upstream`` the outbox's and uplink's figures (``UPSTREAM``);
    ``source`` the counters the source keeps (``Source.counters()``); ``error_rate`` and
    ``interval_s`` as ``HEALTH`` says (``TelemetryReporter`` puts its configured interval in
    ``interval_s``)."""
    fps = round((frames - frames_before) / interval_s, 2) if interval_s > 0 else 0.0
    total = stages.get("total")
    latency = {"p50": total["p50"], "p99": total["p99"]} if total else None
    return {
        "device": device,
        "boot_id": boot_id,
        "at": time.time(),
        "interval_s": interval_s,
        "fps": fps,
        "error_rate": error_rate,
        "latency_ms": latency,
        "stages": stages,
        "dropped_frames": dropped_frames,
        "results_queued": results_queued,
        "results_dropped": results_dropped,
        "model": model,
        "source": dict(source or {}),
        **process,
        **(upstream or {}),
    }


# How a reader judges the figures: when to call the device stale, and how well it infers.
HEALTH = {
    "interval_s": "The configured telemetry interval (s): no message for 3 of them is stale",
    "error_rate": "Failed / seen frames since the serving model came in (HealthStats), "
    "0.0 before any frame; null where the agent keeps no such figure",
}


# What the outbox and the uplink report besides results_queued and results_dropped.
UPSTREAM = {
    "outbox_errors": "Failed outbox database operations since start",
    "outbox_error": "The outbox's last error while it fails (null when it writes)",
    "results_in_memory": "Results held in memory while the outbox cannot write",
    "results_truncated": "Results cut to fit one MQTT message, since start",
    "results_suppressed": "Results the [results] mode held back, since start",
    "messages_shortened": "Events and status shortened to fit the cap, since start",
    "max_packet_bytes": "The packet cap in force (configured, or the broker's if lower)",
    "messages_rejected": "Deploy and chunk messages the agent rejected, since start",
}


# What a telemetry message repeats from the retained status (``StatusBoard.announcement``): a
# device re-announces itself with every telemetry message, so `edgewise fleet` can fill its row
# from live telemetry where retained messages do not reach wildcard subscriptions (RabbitMQ).
ANNOUNCED = {
    "state": 'Always "online" (telemetry is sent only while connected)',
    "groups": "The device's groups ([device] groups), as in the status",
    "model": "The serving model's {name, version}, or null",
    "source_state": "The source's state as in the status (open, failed, ended), or null",
    "deployment": "The last deployment step as in the status, or null",
    "broker": "What the broker offers, from CONNACK (BrokerCapabilities: protocol, ...)",
}


# gauge name -> (help, how to read it from a telemetry message)
_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgewise_fps": ("Frames inferred per second", ("fps",)),
    "edgewise_latency_p50_ms": ("Median end-to-end frame latency (ms)", ("latency_ms", "p50")),
    "edgewise_latency_p99_ms": ("99th percentile end-to-end latency (ms)", ("latency_ms", "p99")),
    "edgewise_dropped_frames": ("Frames dropped before inference", ("dropped_frames",)),
    "edgewise_results_queued": ("Results waiting in the outbox", ("results_queued",)),
    "edgewise_results_dropped": ("Results dropped from the outbox", ("results_dropped",)),
    "edgewise_cpu_percent": ("Agent CPU use (100 = one core)", ("cpu_percent",)),
    "edgewise_rss_mb": ("Agent resident memory (MB)", ("rss_mb",)),
    "edgewise_disk_free_mb": ("Free disk under the agent's state dir (MB)", ("disk_free_mb",)),
    "edgewise_soc_temp_celsius": ("Hottest SoC thermal zone (°C)", ("soc_temp_c",)),
    "edgewise_error_rate": (HEALTH["error_rate"], ("error_rate",)),
    **{
        f"edgewise_{key}": (help_, (key,))
        for key, help_ in UPSTREAM.items()
        if key != "outbox_error"  # text: no gauge
    },
}


def _lookup(message: dict[str, object], path: tuple[str, ...]) -> float | None:
    value: Any = message
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, (int, float)) else None


class PrometheusExporter:
    """Serves telemetry figures as Prometheus gauges on ``http://HOST:PORT/metrics``.

    Needs the optional ``prometheus-client`` package. ``port=0`` picks a free port; ``port``
    then tells which.
    """

    def __init__(self, port: int, device: str, host: str = "0.0.0.0"):
        try:
            import prometheus_client
        except ImportError as exc:
            raise RuntimeError(
                "the Prometheus endpoint needs prometheus-client: pip install prometheus-client"
            ) from exc
        self._device = device
        # A private registry: several exporters (tests, or two agents in one process) must not
        # collide on the global one.
        self._registry = prometheus_client.CollectorRegistry()
        self._gauges = {
            name: prometheus_client.Gauge(name, help_, ["device"], registry=self._registry)
            for name, (help_, _) in _GAUGES.items()
        }
        self._gauge_type = prometheus_client.Gauge
        started = prometheus_client.start_http_server(port, addr=host, registry=self._registry)
        # Older versions return None: their server cannot be stopped.
        self._server: Any = started[0] if started else None
        self._thread: threading.Thread | None = started[1] if started else None
        self.port = self._server.server_port if self._server is not None else port

    def update(self, message: dict[str, object]) -> None:
        """Set every gauge from a ``telemetry_message``; a figure now missing is withdrawn
        rather than left at a stale value."""
        for name, (_, path) in _GAUGES.items():
            value = _lookup(message, path)
            gauge = self._gauges[name]
            if value is not None:
                gauge.labels(device=self._device).set(value)
            else:
                # Older prometheus-client raises when the child was never set.
                with contextlib.suppress(KeyError):
                    gauge.remove(self._device)
        source = message.get("source")
        for key, value in source.items() if isinstance(source, dict) else ():
            self._source_gauge(key).labels(device=self._device).set(value)

    def _source_gauge(self, key: str) -> Any:
        """A source's counters differ by kind: each gets its gauge the first time it is seen."""
        name = f"edgewise_source_{key}"
        if name not in self._gauges:
            help_ = f"Source counter {key!r} (see the source kind's docs), since start"
            self._gauges[name] = self._gauge_type(name, help_, ["device"], registry=self._registry)
        return self._gauges[name]

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class TelemetryReporter(threading.Thread):
    """Every ``interval_s``: ``collect(elapsed_s)`` builds a telemetry message, ``publish`` sends
    it and the optional exporter takes the same figures. A failing sample is logged, not fatal."""

    def __init__(
        self,
        interval_s: float,
        collect: Callable[[float], dict[str, object]],
        publish: Callable[[dict[str, object]], None],
        stop: threading.Event,
        exporter: PrometheusExporter | None = None,
    ):
        super().__init__(name="telemetry", daemon=True)
        self.interval_s, self._collect, self._publish = interval_s, collect, publish  # SIGHUP sets
        self._halt, self._exporter = stop, exporter

    def run(self) -> None:
        last = time.monotonic()
        while not self._halt.wait(self.interval_s):
            now = time.monotonic()
            try:
                message = self._collect(now - last)
                # The configured interval, not the one measured: readers derive staleness from it.
                message["interval_s"] = self.interval_s
                self._publish(message)
                if self._exporter is not None:
                    self._exporter.update(message)
            except Exception as exc:  # telemetry must never take the agent down
                log.error(
                    "telemetry sample failed: %s: %s",
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            last = now
        if self._exporter is not None:
            self._exporter.close()
