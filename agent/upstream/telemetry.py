"""Periodic health figures of a device: pipeline rates and latencies plus process and SoC state.

``telemetry_message`` builds the payload published on ``devices/{id}/telemetry``;
``TelemetryReporter`` is the thread that sends one every interval; ``agent.upstream.metrics``
serves the same figures for scraping when a site prefers pull. Every figure is in base units
(seconds, bytes, ratios) and every count since start ends in ``_total``, under the same name in
the JSON and (with ``edgewise_`` in front) on ``/metrics``: ``FIGURES`` is that table.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class ProcessSampler:
    """Samples this process and its host: CPU use, RSS, free disk and SoC temperature."""

    def __init__(self, thermal_root: Path = Path("/sys/class/thermal")):
        self._thermal_root = thermal_root
        self._last_cpu = _cpu_seconds()
        self._last_wall = time.monotonic()

    def sample(self, disk_path: Path) -> dict[str, float | None]:
        """``cpu_ratio`` (CPU seconds per second since the previous sample, or construction;
        1.0 = one core busy), ``rss_bytes``, ``disk_free_bytes`` of ``disk_path`` and
        ``soc_temp_celsius`` (None without sensors)."""
        cpu, wall = _cpu_seconds(), time.monotonic()
        elapsed = wall - self._last_wall
        cpu_ratio = (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        return {
            "cpu_ratio": round(max(cpu_ratio, 0.0), 4),
            "rss_bytes": _rss_bytes(),
            "disk_free_bytes": shutil.disk_usage(disk_path).free,
            "soc_temp_celsius": self._soc_temp_celsius(),
        }

    def _soc_temp_celsius(self) -> float | None:
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


def _seconds(ms: float) -> float:
    return round(ms / 1000.0, 7)  # 0.1 µs: finer than any stage is timed


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
    gate: Mapping[str, float] | None = None,
    deployments: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """The telemetry payload for one interval. ``stages`` is ``StageStats.summary()`` (ms);
    ``frames``/``frames_before`` are frame counts now and one interval ago; ``process`` is
    ``ProcessSampler.sample()``; ``upstream`` the outbox's and uplink's figures (``UPSTREAM``);
    ``source`` the counters the source keeps (``Source.counters()``); ``error_rate`` and
    ``interval_s`` as ``HEALTH`` says (``TelemetryReporter`` puts its configured interval in
    ``interval_s``); ``gate`` the voice gate's figures (``gate_figures``), only where one runs;
    ``deployments`` ``DeploymentOutcomes.snapshot()``."""
    fps = round((frames - frames_before) / interval_s, 2) if interval_s > 0 else 0.0
    total = stages.get("total")
    return {
        "device": device,
        "boot_id": boot_id,
        "at": time.time(),
        "interval_s": interval_s,
        "frames_total": frames,
        "frames_per_second": fps,
        "error_ratio": error_rate,
        "latency_p50_seconds": _seconds(total["p50"]) if total else None,
        "latency_p99_seconds": _seconds(total["p99"]) if total else None,
        "frame_latency_seconds": {
            stage: {key: _seconds(ms) for key, ms in figures.items()}
            for stage, figures in stages.items()
        },
        "dropped_frames_total": dropped_frames,
        "results_queued": results_queued,
        "results_dropped_total": results_dropped,
        "deployments_total": dict(deployments or {}),
        "model": model,
        "source": dict(source or {}),
        **process,
        **(upstream or {}),
        **(gate or {}),
    }


def gate_figures(counters: Mapping[str, float]) -> dict[str, float]:
    """``VoiceGate.counters()`` under telemetry's names (``GATE``): counts end in ``_total``,
    the voice-activity model's time is in seconds."""
    out: dict[str, float] = {}
    for key, value in counters.items():
        if key == "gate_vad_ms":
            out["gate_vad_seconds_total"] = round(value / 1000.0, 4)
        else:
            out[f"{key}_total"] = value
    return out


# How a reader judges the figures: when to call the device stale, and how well it infers.
HEALTH = {
    "interval_s": "The configured telemetry interval (s): no message for 3 of them is stale",
    "error_ratio": "Failed / seen frames since the serving model came in (HealthStats), "
    "0.0 before any frame; null where the agent keeps no such figure",
}


# What the outbox and the uplink report besides results_queued and results_dropped_total.
UPSTREAM = {
    "outbox_errors_total": "Failed outbox database operations since start",
    "outbox_error": "The outbox's last error while it fails (null when it writes)",
    "results_in_memory": "Results held in memory while the outbox cannot write",
    "results_truncated_total": "Results cut to fit one MQTT message, since start",
    "results_suppressed_total": "Results the [results] mode held back, since start",
    "messages_shortened_total": "Events and status shortened to fit the cap, since start",
    "max_packet_bytes": "The packet cap in force (configured, or the broker's if lower)",
    "messages_rejected_total": "Deploy and chunk messages the agent rejected, since start",
}


# The voice gate's figures ([gate], ``gate_figures``), since start; absent without a gate.
GATE = {
    "gate_passed_total": "Audio windows the voice gate let through to the model (speech heard)",
    "gate_closed_total": "Audio windows the voice gate held back (no speech within hangover_s)",
    "gate_vad_chunks_total": "Chunks the voice-activity model ran on (32 ms each for Silero VAD)",
    "gate_vad_seconds_total": "Time the voice-activity model took in all (its share of the CPU)",
    "gate_errors_total": "Windows let through because the voice-activity model failed on them",
}


# What a telemetry message repeats from the retained status (``StatusBoard.announcement``): a
# device re-announces itself with every telemetry message, so `edgewise fleet` can fill its row
# from live telemetry where retained messages do not reach wildcard subscriptions (RabbitMQ).
ANNOUNCED = {
    "state": 'Always "online" (telemetry is sent only while connected)',
    "groups": "The device's groups ([device] groups), as in the status",
    "model": "The serving model's {name, version}, or null",
    "backend": "What runs it, {name, measured}: every backend the probe tried, p50/p99 or why "
    "it was skipped (null measured: not chosen by a probe), or null",
    "source_state": "The source's state as in the status (open, failed, ended), or null",
    "deployment": "The last deployment step as in the status, or null",
    "broker": "What the broker offers, from CONNACK (BrokerCapabilities: protocol, ...)",
}


# Every number a telemetry message carries at its top level that /metrics also serves, as
# ``edgewise_<key>``: key -> (Prometheus type, help). A counter's key ends in ``_total``.
FIGURES: dict[str, tuple[str, str]] = {
    "frames_total": ("counter", "Frames inferred since start"),
    "dropped_frames_total": ("counter", "Frames dropped before inference, since start"),
    "results_queued": ("gauge", "Results waiting in the outbox"),
    "results_dropped_total": ("counter", "Results dropped from the full outbox, since start"),
    "cpu_ratio": ("gauge", "Agent CPU seconds per second over the last interval (1 = one core)"),
    "rss_bytes": ("gauge", "Agent resident memory in bytes"),
    "disk_free_bytes": ("gauge", "Free disk under the agent's state dir in bytes"),
    "soc_temp_celsius": ("gauge", "Hottest SoC thermal zone in degrees Celsius"),
    "error_ratio": ("gauge", HEALTH["error_ratio"]),
    **{
        key: ("counter" if key.endswith("_total") else "gauge", help_)
        for key, help_ in UPSTREAM.items()
        if key != "outbox_error"  # text: no metric
    },
    **{key: ("counter", help_) for key, help_ in GATE.items()},
}


class Exporter(Protocol):
    """Where else the figures go (``metrics.PrometheusExporter``)."""

    def update(self, message: dict[str, object]) -> None: ...

    def close(self) -> None: ...


class TelemetryReporter(threading.Thread):
    """Every ``interval_s``: ``collect(elapsed_s)`` builds a telemetry message, ``publish`` sends
    it and the optional exporter takes the same figures. A failing sample is logged, not fatal."""

    def __init__(
        self,
        interval_s: float,
        collect: Callable[[float], dict[str, object]],
        publish: Callable[[dict[str, object]], None],
        stop: threading.Event,
        exporter: Exporter | None = None,
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
