"""The agent daemon: wires the link, the deployer and the frame pipeline, and stops them cleanly."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.comms.link import MqttLink
from agent.comms.sizing import payload_budget
from agent.config import AgentConfig, changed_keys, load_config, reloadable
from agent.contract import Topics, TrustStore
from agent.delivery.deployer import Deployer
from agent.delivery.store import ModelStore
from agent.errors import AgentError, ConfigError
from agent.inference.pipeline import (
    CaptureWorker,
    FrameSlot,
    HealthStats,
    InferenceWorker,
    ModelSlot,
)
from agent.inference.runtime import Inference, ModelSession
from agent.inference.stats import StageStats
from agent.notify import SystemdNotifier, Watchdog
from agent.sources.opencv import Frame, make_source
from agent.upstream.outbox import Outbox
from agent.upstream.results import RateFilter, ResultBuilder
from agent.upstream.spool import Spool
from agent.upstream.telemetry import (
    ProcessSampler,
    PrometheusExporter,
    TelemetryReporter,
    telemetry_message,
)
from agent.upstream.uplink import ResultsUplink

log = logging.getLogger(__name__)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# SIGTERM to exit: the frame in flight, then the outbox, then goodbye; systemd's stop timeout
# and the issue ask for 5 s in all.
JOIN_S, FLUSH_S, GOODBYE_S = 2.0, 1.5, 1.0


def _open_outbox(
    config: AgentConfig, report: Callable[[dict[str, Any]], None], fatal: Callable[[str], None]
) -> Spool:
    """The outbox behind a spool: a full disk (at start or later) holds results in memory; a
    database that cannot be opened for another reason stops the agent here."""
    path = config.device.state_dir / "outbox.db"
    try:
        return Spool(
            lambda: Outbox(path, config.outbox.max_rows, config.outbox.max_bytes),
            config.outbox.memory_bytes, config.outbox.max_failing_s, report, fatal,
            lambda: shutil.disk_usage(config.device.state_dir).free,
        )  # fmt: skip
    except (sqlite3.Error, OSError) as exc:
        raise AgentError(
            f"cannot open the outbox {path}: {exc} (move it aside to start with an empty one)"
        ) from exc


def _exporter(config: AgentConfig) -> PrometheusExporter | None:
    port = config.telemetry.prometheus_port
    if not port:
        return None
    try:
        return PrometheusExporter(port, config.device.id)
    except (OSError, RuntimeError) as exc:  # taken since check-config looked, or no package
        raise ConfigError(f"telemetry.prometheus_port: cannot serve on port {port}: {exc}") from exc


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        max_results: int | None = None,
        config_path: Path | None = None,
    ):
        """``config_path``: where SIGHUP (:meth:`request_reload`) reads the config again."""
        self.config = config
        self._config_path = config_path
        self.stop_event = threading.Event()
        self._reload = threading.Event()
        self.notifier = SystemdNotifier()
        self._watchdog = Watchdog(self.notifier)
        self.boot_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self._device = config.device.id
        self._topics = Topics(config.mqtt.topic_root)
        self._max_results = max_results
        # A result too big for a message on its own is stored cut (agent.comms.sizing).
        lone = payload_budget(self._topics.results(self._device), config.mqtt.max_packet_bytes) - 2
        self.results = ResultBuilder(self._device, self.boot_id, config.source.uri, lone)
        self.rate = RateFilter(config.results)
        self.stages = StageStats()
        self._source: dict[str, Any] | None = None
        self._source_failed = False
        self.trust = TrustStore.from_files(config.trust.public_keys)
        self.store = ModelStore(config.device.state_dir)
        self.models = ModelSlot()
        self.health = HealthStats()
        self._deployment: dict[str, Any] | None = None
        self.link = MqttLink(
            config.mqtt,
            client_id=f"edgewise-agent-{self._device}",
            will=(self._topics.status(self._device), self._status("offline")),
            birth=lambda: (self._topics.status(self._device), self._status("online")),
        )
        self.outbox = _open_outbox(config, self.report_event, self._give_up)
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
            config.outbox.batch_max, config.outbox.window, self.outbox.retry,
        )  # fmt: skip
        self._capture = CaptureWorker(
            make_source(config.source, config.mqtt), self.frames, self.stop_event,
            self._source_state,
        )  # fmt: skip
        self._inference = InferenceWorker(
            self.frames, self.models, self._publish_result, self.stop_event, self.health,
            self.stages, self._watchdog.beat,
        )  # fmt: skip
        self._sampler = ProcessSampler()
        self._frames_before = 0
        self._telemetry = TelemetryReporter(
            config.telemetry.interval_s, self._telemetry_message, self._publish_telemetry,
            self.stop_event,
            _exporter(config),
        )  # fmt: skip
        self._crashed: str | None = None

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
            upstream={
                "outbox_errors": self.outbox.errors, "outbox_error": self.outbox.error,
                "results_in_memory": self.outbox.in_memory,
                "results_truncated": self.results.truncated + self.uplink.truncated,
                "messages_shortened": self.link.shortened,
                "max_packet_bytes": self.link.max_packet,
                "messages_rejected": self.deployer.boundary.rejected,
            },
        )  # fmt: skip

    def _publish_telemetry(self, message: dict[str, object]) -> None:
        # Retained, so `edgewise fleet` shows a device's last figures the moment it starts. Not
        # while offline: paho would queue every interval in memory for the whole outage, to send
        # figures that the next interval's replace anyway.
        if self.link.connected.is_set():
            topic = self._topics.telemetry(self._device)
            self.link.publish(topic, _json(message), qos=1, retain=True)

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
            self.notifier.status(self._serving())

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

    def _serving(self) -> str:
        model = self._model()
        if model is None:
            return "waiting for a deployment"
        return f"serving {model['name']} {model['version']} on {self.config.source.uri}"

    def request_reload(self) -> None:
        """Re-read the config (SIGHUP); safe to call from a signal handler."""
        self._reload.set()

    def _reload_config(self) -> None:
        if self._config_path is None:
            return
        try:
            new = load_config(self._config_path)
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            self.report_event({"type": "config", "state": "rejected", "reason": str(exc)})
            return
        changed = changed_keys(self.config, new)
        applied = [key for key in changed if reloadable(key)]
        later = [key for key in changed if not reloadable(key)]
        sections: dict[str, dict[str, object]] = {}
        for key in applied:
            section, field = key.split(".", 1)
            sections.setdefault(section, {})[field] = getattr(getattr(new, section), field)
        self.config = self.config.model_copy(
            update={
                section: getattr(self.config, section).model_copy(update=fields)
                for section, fields in sections.items()
            }
        )
        self.rate = RateFilter(self.config.results)
        self._telemetry.interval_s = self.config.telemetry.interval_s
        self.deployer.reconfigure(self.config)
        if later:
            log.warning("config reloaded; these need a restart to apply: %s", ", ".join(later))
        log.info("config reloaded: %s", ", ".join(applied) or "nothing changed")
        self.report_event(
            {"type": "config", "state": "reloaded", "applied": applied, "needs_restart": later}
        )

    def run(self) -> int:
        """Serve until ``stop_event`` is set (signal, end of file, or result limit); 1 when a
        worker thread crashed."""
        previous, threading.excepthook = threading.excepthook, self._thread_crashed
        self.deployer.boot()
        self.deployer.subscribe()
        self.link.start()
        self.deployer.start()
        self.uplink.start()
        self._telemetry.start()
        self._capture.start()
        self.notifier.ready(self._serving())  # before the loop's first WATCHDOG ping
        self._inference.start()
        try:
            while not self.stop_event.is_set() and self._inference.is_alive():
                if not self._deployer_alive():
                    break
                if self._reload.wait(0.5):
                    self._reload.clear()
                    self._reload_config()
        finally:
            self._shut_down()
            threading.excepthook = previous
        return 1 if self._crashed else 0

    def _deployer_alive(self) -> bool:
        """The deployer ends only when the agent stops; gone before that (however it went), the
        agent could never be updated again, so it exits 1 and systemd starts a whole one."""
        if self.deployer.is_alive() or self.stop_event.is_set():
            return True
        if self._crashed is None:
            self._crashed = self.deployer.name
            log.error("thread %s ended unexpectedly; stopping", self.deployer.name)
        return False

    def _give_up(self, reason: str) -> None:
        """Something the agent cannot go on without (the outbox): exit 1, systemd restarts."""
        log.error("%s; stopping so that the agent is started again", reason)
        self._crashed = self._crashed or "outbox"
        self.stop_event.set()

    def _thread_crashed(self, args: threading.ExceptHookArgs) -> None:
        """A worker died of a bug: one error line (the traceback with -v), then stop and exit 1
        so that systemd starts a whole agent again rather than one missing a thread."""
        self._crashed = args.thread.name if args.thread else "?"
        log.error(
            "thread %s crashed: %s: %s; stopping", self._crashed, args.exc_type.__name__,
            args.exc_value, exc_info=args.exc_value if log.isEnabledFor(logging.DEBUG) else None,
        )  # fmt: skip
        self.stop_event.set()

    def _shut_down(self) -> None:
        self.notifier.stopping()
        self.stop_event.set()
        deadline = time.monotonic() + JOIN_S
        # Inference first: it finishes the frame in flight and appends its result.
        workers = (self._inference, self._capture, self.uplink, self._telemetry, self.deployer)
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if not self.uplink.flush(timeout=FLUSH_S):
            log.warning("%d results stay in the outbox for next time", self.outbox.queued)
        self.outbox.close()
        self.link.stop(
            goodbye=(self._topics.status(self._device), self._status("offline")),
            timeout=GOODBYE_S,
        )
        log.info(
            "stopped: %d results, %d frames dropped, %d frames before a model was serving",
            self.results.seq, self.frames.dropped, self._inference.frames_without_model,
        )  # fmt: skip
