"""One telemetry message from the running parts: each part is asked for its own figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.comms.guard import Boundary
from agent.comms.link import MqttLink
from agent.inference.pipeline import FrameSlot, HealthStats
from agent.inference.stats import StageStats
from agent.sources import Source
from agent.upstream.results import ResultSink
from agent.upstream.spool import Spool
from agent.upstream.telemetry import ProcessSampler, gate_figures, telemetry_message
from agent.upstream.uplink import ResultsUplink


@dataclass
class TelemetryCollector:
    """Called by the telemetry thread every interval with the seconds since the last call."""

    device: str
    boot_id: str
    state_dir: Path
    stages: StageStats
    frames: FrameSlot
    source: Source
    results: ResultSink
    outbox: Spool
    uplink: ResultsUplink
    link: MqttLink
    boundary: Boundary
    model: Callable[[], dict[str, str] | None]
    sampler: ProcessSampler = field(default_factory=ProcessSampler)
    # The status fields telemetry repeats (StatusBoard.announcement), so a fleet view on a broker
    # that keeps retained status from wildcard subscribers still learns them.
    announce: Callable[[], Mapping[str, object]] | None = None
    # Inference outcomes since the serving model came in: the telemetry's error_ratio.
    health: HealthStats | None = None
    # The voice gate's figures (VoiceGate.counters), where a [gate] runs.
    gate: Callable[[], Mapping[str, float]] | None = None
    # Deployment steps by outcome since start (DeploymentOutcomes.snapshot).
    deployments: Callable[[], Mapping[str, int]] | None = None
    _frames_before: int = 0

    def __call__(self, elapsed_s: float) -> dict[str, object]:
        frames, frames_before = self.stages.frames, self._frames_before
        self._frames_before = frames
        message = telemetry_message(
            device=self.device,
            boot_id=self.boot_id,
            interval_s=elapsed_s,
            frames=frames,
            frames_before=frames_before,
            stages=self.stages.summary(),
            dropped_frames=self.frames.dropped,
            results_queued=self.outbox.queued,
            results_dropped=self.outbox.dropped,
            process=self.sampler.sample(self.state_dir),
            model=self.model(),
            upstream=self._upstream(),
            source=self.source.counters(),
            error_rate=self._error_rate(),
            gate=gate_figures(self.gate()) if self.gate is not None else None,
            deployments=self.deployments() if self.deployments is not None else None,
        )
        message["broker"] = self.link.capabilities.as_dict()  # what the last CONNACK offered
        if self.announce is not None:
            message.update(self.announce())
        return message

    def _error_rate(self) -> float | None:
        if self.health is None:
            return None
        _seen, rate, _p99 = self.health.snapshot()
        return round(rate, 4)

    def _upstream(self) -> dict[str, object]:
        return {
            "outbox_errors_total": self.outbox.errors,
            "outbox_error": self.outbox.error,
            "results_in_memory": self.outbox.in_memory,
            "results_truncated_total": self.results.truncated + self.uplink.truncated,
            "results_suppressed_total": self.results.suppressed,
            "messages_shortened_total": self.link.shortened,
            "max_packet_bytes": self.link.max_packet,
            "messages_rejected_total": self.boundary.rejected,
        }
