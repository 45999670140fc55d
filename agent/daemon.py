"""The agent daemon: wires the link, the deployer and the frame pipeline, and stops them cleanly."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from . import __version__
from .config import AgentConfig
from .contract import ContractError, Topics, TrustStore
from .deployer import Deployer
from .errors import ModelLoadError
from .link import MqttLink
from .outbox import Outbox
from .pipeline import CaptureWorker, FrameSlot, HealthStats, InferenceWorker, ModelSlot
from .results import RateFilter, ResultBuilder
from .runtime import Inference, ModelSession
from .sources import Frame, make_source
from .stats import StageStats
from .store import ModelStore
from .telemetry import ProcessSampler, PrometheusExporter, TelemetryReporter, telemetry_message
from .uplink import ResultsUplink

log = logging.getLogger(__name__)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Agent:
    def __init__(self, config: AgentConfig, max_results: int | None = None):
        self.config = config
        self.stop_event = threading.Event()
        self.boot_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self._device = config.device.id
        self._topics = Topics(config.mqtt.topic_root)
        self._max_results = max_results
        self.results = ResultBuilder(self._device, self.boot_id, config.source.uri)
        self.rate = RateFilter(config.results)
        self.stages = StageStats()
        self._source: dict[str, Any] | None = None
        self._source_failed = False
        self.trust = TrustStore.from_files(config.trust.public_keys)
        self.store = ModelStore(config.device.state_dir)
        self.outbox = Outbox(
            config.device.state_dir / "outbox.db", config.outbox.max_rows, config.outbox.max_bytes
        )
        self.models = ModelSlot()
        self.health = HealthStats()
        self._deployment: dict[str, Any] | None = None
        self.link = MqttLink(
            config.mqtt,
            client_id=f"edgewise-agent-{self._device}",
            will=(self._topics.status(self._device), self._status("offline")),
            birth=lambda: (self._topics.status(self._device), self._status("online")),
        )
        self.deployer = Deployer(
            config, self.link, self.trust, self.store, self.models, self.health,
            self.report_event, self.stop_event,
        )  # fmt: skip
        source = config.source
        # Files wait for inference; live sources never do (a stale frame is dropped instead).
        files = source.kind in ("images", "sensor") or (
            source.kind == "video" and not source.realtime
        )
        self.frames = FrameSlot(block=files)
        self.uplink = ResultsUplink(
            self.outbox, self.link, self._topics.results(self._device), self.stop_event,
            config.outbox.batch_max, config.outbox.window,
        )  # fmt: skip
        self._capture = CaptureWorker(
            make_source(config.source, config.mqtt), self.frames, self.stop_event,
            self._source_state,
        )  # fmt: skip
        self._inference = InferenceWorker(
            self.frames, self.models, self._publish_result, self.stop_event, self.health,
            self.stages,
        )  # fmt: skip
        self._sampler = ProcessSampler()
        self._frames_before = 0
        self._telemetry = TelemetryReporter(
            config.telemetry.interval_s, self._telemetry_message, self._publish_telemetry,
            self.stop_event,
            PrometheusExporter(config.telemetry.prometheus_port, self._device)
            if config.telemetry.prometheus_port else None,
        )  # fmt: skip

    def _model(self) -> dict[str, str] | None:
        session = self.models.current
        return (
            {"name": session.manifest.name, "version": session.manifest.version}
            if session
            else None
        )

    def _telemetry_message(self, elapsed_s: float) -> dict[str, object]:
        frames, frames_before = self.stages.frames, self._frames_before
        self._frames_before = frames
        return telemetry_message(
            device=self._device, boot_id=self.boot_id, interval_s=elapsed_s,
            frames=frames, frames_before=frames_before, stages=self.stages.summary(),
            dropped_frames=self.frames.dropped, results_queued=self.outbox.queued,
            results_dropped=self.outbox.dropped,
            process=self._sampler.sample(self.config.device.state_dir), model=self._model(),
        )  # fmt: skip

    def _publish_telemetry(self, message: dict[str, object]) -> None:
        # Retained, so `edgewise fleet` shows a device's last figures the moment it starts.
        self.link.publish(self._topics.telemetry(self._device), _json(message), qos=1, retain=True)

    def _status(self, state: str) -> bytes:
        return _json(
            {
                "state": state,
                "device": self._device,
                "agent_version": __version__,
                "boot_id": self.boot_id,
                "model": self._model(),
                "source": {"uri": self.config.source.uri, **(self._source or {})},
                "uptime_s": round(time.time() - self.started_at, 1),
                "deployment": self._deployment,
            }
        )

    def report_event(self, event: dict[str, Any]) -> None:
        """Publish an event; a deployment step also becomes part of the retained status."""
        event = {"device": self._device, "boot_id": self.boot_id, "at": time.time(), **event}
        self.link.publish(self._topics.events(self._device), _json(event), qos=1)
        if event.get("type") == "deployment":
            self._deployment = {k: v for k, v in event.items() if k not in ("device", "boot_id")}
            self.link.announce()

    def _publish_result(self, frame: Frame, session: ModelSession, inference: Inference) -> None:
        if not self.rate.admit(inference, time.monotonic()):
            return
        self.outbox.append(self.results.build(frame, session, inference))
        if self._max_results is not None and self.results.seq >= self._max_results:
            self.stop_event.set()

    def _source_state(self, state: str, detail: str) -> None:
        self._source = {"state": state, "detail": detail, "at": round(time.time(), 3)}
        if state != "open" or self._source_failed:
            self.report_event({"type": "source", **self._source})
        self._source_failed = state in ("failed", "ended")
        self.link.announce()

    def _load_installed(self) -> None:
        try:
            installed = self.store.current(self.trust)
        except (ContractError, OSError) as exc:
            log.error("installed model failed verification, waiting for a new one: %s", exc)
            return
        if installed is None:
            log.info("no model installed yet; waiting for a deployment")
            return
        try:
            self.models.swap(
                ModelSession(installed.model_path, installed.manifest, self.config.runtime)
            )
        except ModelLoadError as exc:
            log.error("%s", exc)
            return
        log.info("serving installed %s %s", installed.manifest.name, installed.manifest.version)

    def run(self) -> int:
        """Serve until ``stop_event`` is set (signal, end of file, or result limit)."""
        self._load_installed()
        self.deployer.subscribe()
        self.link.start()
        self.deployer.start()
        self.uplink.start()
        self._telemetry.start()
        self._capture.start()
        self._inference.start()
        try:
            while not self.stop_event.is_set() and self._inference.is_alive():
                self.stop_event.wait(0.5)
        finally:
            self.stop_event.set()
            workers = (self._capture, self._inference, self.deployer, self.uplink, self._telemetry)
            for worker in workers:
                worker.join(timeout=5)
            if not self.uplink.flush(timeout=2.0):
                log.warning("%d results stay in the outbox for next time", self.outbox.queued)
            self.outbox.close()
            self.link.stop(goodbye=(self._topics.status(self._device), self._status("offline")))
            log.info(
                "stopped: %d results, %d frames dropped, %d frames before a model was serving",
                self.results.seq, self.frames.dropped, self._inference.frames_without_model,
            )  # fmt: skip
        return 0
