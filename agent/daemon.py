"""The agent daemon: wires the subsystems together, runs them, and stops them cleanly.

Each part owns one job (ARCHITECTURE.md): the link talks to the broker, the deployer turns
announcements into a serving model, the capture and inference threads move frames, the outbox and
uplink carry results, the telemetry thread reports health. This module only builds them (with
keyword arguments), starts them in order and stops them within systemd's 5 s.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from agent.comms.link import MqttLink
from agent.comms.sizing import payload_budget
from agent.config import AgentConfig, load_config
from agent.config.reload import merge
from agent.contract import Topics, TrustStore
from agent.control.actions import Controls
from agent.control.plane import ControlPlane, shadow_runner
from agent.delivery.deployer import Deployer
from agent.delivery.outcomes import DeploymentOutcomes
from agent.delivery.store import ModelStore
from agent.delivery.voicegate import build_gate
from agent.errors import AgentError, ConfigError
from agent.inference.pipeline import (
    CaptureWorker,
    FrameSlot,
    HealthStats,
    InferenceWorker,
    ModelSlot,
    RateGate,
)
from agent.inference.stats import StageStats
from agent.notify import SystemdNotifier, Watchdog
from agent.sources import make_source
from agent.upstream.collector import TelemetryCollector
from agent.upstream.metrics import LiveFigures, PrometheusExporter
from agent.upstream.outbox import Outbox
from agent.upstream.results import RateFilter, ResultBuilder, ResultSink
from agent.upstream.spool import Spool
from agent.upstream.status import StatusBoard, encode
from agent.upstream.telemetry import TelemetryReporter
from agent.upstream.uplink import ResultsUplink

log = logging.getLogger(__name__)

SETTLE_S = 3.0  # see ResultsUplink: longer than a SIGKILLed node takes to be noticed

RESTART_EXIT = 75  # the `restart` command: systemd's Restart=on-failure starts the agent again

# SIGTERM to exit: the frame in flight, then the outbox, then goodbye; systemd's stop timeout
# and the issue ask for 5 s in all.
JOIN_S, FLUSH_S, GOODBYE_S = 2.0, 1.5, 1.0


def _open_outbox(config: AgentConfig, board: StatusBoard, agent: Agent) -> Spool:
    """The outbox behind a spool: a full disk (at start or later) holds results in memory; a
    database that cannot be opened for another reason stops the agent here."""
    path = config.device.state_dir / "outbox.db"
    outbox = config.outbox
    try:
        return Spool(
            lambda: Outbox(path, outbox.max_rows, outbox.max_bytes),
            memory_bytes=outbox.memory_bytes,
            max_failing_s=outbox.max_failing_s,
            report=board.event,
            fatal=agent.give_up,
            free_bytes=lambda: shutil.disk_usage(config.device.state_dir).free,
        )
    except (sqlite3.Error, OSError) as exc:
        raise AgentError(
            f"cannot open the outbox {path}: {exc} (move it aside to start with an empty one)"
        ) from exc


def _exporter(config: AgentConfig, live: LiveFigures) -> PrometheusExporter | None:
    port = config.telemetry.prometheus_port
    if not port:
        return None
    try:
        return PrometheusExporter(port, config.device.id, live=live)
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
        self.voice = build_gate(config)  # [gate]: first, so a bad package stops nothing started
        self.stop_event = threading.Event()
        self._reload = threading.Event()
        self._crashed: str | None = None
        self._restart = False
        self.notifier = SystemdNotifier()
        self._watchdog = Watchdog(self.notifier)
        self.boot_id = uuid.uuid4().hex[:12]
        device = config.device.id
        self._topics = Topics(config.mqtt.topic_root)
        self.models, self.health, self.stages = ModelSlot(), HealthStats(), StageStats()
        self.status = StatusBoard(
            device=device,
            boot_id=self.boot_id,
            groups=config.device.groups,
            topics=self._topics,
            source_uri=config.source.uri,
            models=self.models,
            notifier=self.notifier,
        )
        self.link = MqttLink(
            config.mqtt,
            client_id=f"edgewise-agent-{device}",
            will=(self.status.topic, self.status.payload("offline")),
            birth=lambda: (self.status.topic, self.status.payload("online")),
        )
        self.status.link = self.link
        self.deployments = DeploymentOutcomes()  # telemetry's deployments_total
        self.status.observe(self.deployments.count)
        self.deployer = self._build_deployer()  # its store makes the state folder's layout
        self.outbox = _open_outbox(config, self.status, self)
        self._build_frame_path(max_results)
        self.control = ControlPlane(
            controls=self._controls(), status=self.status, stop=self.stop_event
        )
        self._telemetry = TelemetryReporter(
            config.telemetry.interval_s,
            collect=self._collector(),
            publish=self._publish_telemetry,
            stop=self.stop_event,
            exporter=_exporter(
                config,
                LiveFigures(
                    histograms=self.stages.histograms, connected=self.link.connected.is_set
                ),
            ),
        )

    def _live_figures(self) -> LiveFigures:
        """What /metrics reads at each scrape rather than from the last telemetry message."""
        return LiveFigures(histograms=self.stages.histograms, connected=self.link.connected.is_set)

    def _build_deployer(self) -> Deployer:
        """The deployer, and the shadow runner it hands ``mode: shadow`` packages to."""
        config = self.config
        self.shadow = shadow_runner(
            lambda: self.config,
            self.status.event,
            lambda version: self.deployer.activate(version),
            self.stop_event,
        )
        return Deployer(
            config=config,
            link=self.link,
            trust=TrustStore.from_files(config.trust.public_keys),
            store=ModelStore(config.device.state_dir),  # creates the state folder's layout
            models=self.models,
            health=self.health,
            report=self.status.event,
            stop=self.stop_event,
            stage=self.shadow.start_candidate,
        )

    def _build_frame_path(self, max_results: int | None) -> None:
        """Source → frame slot → inference → result sink → outbox → uplink."""
        config, device = self.config, self.config.device.id
        self._source = make_source(config.source, config.mqtt)
        # A live source never waits for inference (a stale frame is dropped); a recording does.
        self.frames = FrameSlot(block=not self._source.live)
        results_topic = self._topics.results(device)
        # A result too big for a message on its own is stored cut (agent.comms.sizing).
        lone = payload_budget(results_topic, config.mqtt.max_packet_bytes) - 2
        self.results = ResultSink(
            builder=ResultBuilder(device, self.boot_id, config.source.uri, lone),
            rate=RateFilter(config.results),
            outbox=self.outbox,
            stop=self.stop_event,
            limit=max_results,
        )
        self.uplink = ResultsUplink(
            self.outbox,
            self.link,
            results_topic,
            self.stop_event,
            batch_max=config.outbox.batch_max,
            window=config.outbox.window,
            housekeeping=self.outbox.retry,
            # Several nodes: a node that dies right after acknowledging may not have passed the
            # batch on; keep it for a few seconds to send again from the next node.
            settle_s=SETTLE_S if len(config.mqtt.endpoints) > 1 else 0.0,
        )
        self._capture = CaptureWorker(
            self._source,
            self.frames,
            self.stop_event,
            on_state=self.status.source_state,
            ready=self.models.serving,
        )
        self._inference = InferenceWorker(
            self.frames,
            self.models,
            sink=self.results,
            stop=self.stop_event,
            health=self.health,
            stages=self.stages,
            heartbeat=self._watchdog.beat,
            gate=RateGate(config.runtime.max_fps),
            screen=self.voice,
        )

    def _controls(self) -> Controls:
        return Controls(
            device=self.config.device.id,
            boot_id=self.boot_id,
            config=lambda: self.config,
            apply=self._apply,
            deployer=self.deployer,
            results=self.results,
            inference=self._inference,
            shadow=self.shadow,
            link=self.link,
            topics=self._topics,
            restart=self.restart,
            started_at=time.time(),
        )

    def _apply(self, section: str, values: dict[str, object]) -> None:
        """A command changed the running config (until the next restart or reload)."""
        updated = getattr(self.config, section).model_copy(update=values)
        self.config = self.config.model_copy(update={section: updated})

    def restart(self) -> None:
        """The `restart` command: stop as on SIGTERM, exit 75 so that systemd starts again."""
        log.info("restart requested by command; exiting %d", RESTART_EXIT)
        self._restart = True
        self.stop_event.set()

    def _collector(self) -> TelemetryCollector:
        return TelemetryCollector(
            device=self.config.device.id,
            boot_id=self.boot_id,
            state_dir=self.config.device.state_dir,
            stages=self.stages,
            frames=self.frames,
            source=self._source,
            results=self.results,
            outbox=self.outbox,
            uplink=self.uplink,
            link=self.link,
            boundary=self.deployer.boundary,
            model=self.status.model,
            announce=self.status.announcement,
            health=self.health,
            gate=self.voice.counters if self.voice is not None else None,
            deployments=self.deployments.snapshot,
        )

    def _publish_telemetry(self, message: dict[str, object]) -> None:
        # Retained, so `edgewise fleet` shows a device's last figures the moment it starts. Not
        # while offline: paho would queue every interval in memory for the whole outage, to send
        # figures that the next interval's replace anyway.
        if self.link.connected.is_set():
            topic = self._topics.telemetry(self.config.device.id)
            self.link.publish(topic, encode(message), qos=1, retain=True)

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
            self.status.event({"type": "config", "state": "rejected", "reason": str(exc)})
            return
        reload = merge(self.config, new)
        self.config = reload.config
        self.results.reconfigure(self.config.results)
        self._inference.gate.max_fps = self.config.runtime.max_fps
        self._telemetry.interval_s = self.config.telemetry.interval_s
        self.deployer.reconfigure(self.config)
        if reload.needs_restart:
            log.warning(
                "config reloaded; these need a restart to apply: %s",
                ", ".join(reload.needs_restart),
            )
        log.info("config reloaded: %s", ", ".join(reload.applied) or "nothing changed")
        self.status.event(
            {
                "type": "config",
                "state": "reloaded",
                "applied": reload.applied,
                "needs_restart": reload.needs_restart,
            }
        )

    def run(self) -> int:
        """Serve until ``stop_event`` is set (signal, end of file, or result limit); 1 when a
        worker thread crashed."""
        previous, threading.excepthook = threading.excepthook, self._thread_crashed
        self.deployer.boot()
        self.deployer.subscribe()
        self.control.subscribe()
        self.link.start()
        self.deployer.start()
        for thread in self.control.threads:
            thread.start()
        self.uplink.start()
        self._telemetry.start()
        self._capture.start()
        self.notifier.ready(self.status.serving())  # before the loop's first WATCHDOG ping
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
        return 1 if self._crashed else RESTART_EXIT if self._restart else 0

    def _deployer_alive(self) -> bool:
        """The deployer ends only when the agent stops; gone before that (however it went), the
        agent could never be updated again, so it exits 1 and systemd starts a whole one."""
        if self.deployer.is_alive() or self.stop_event.is_set():
            return True
        if self._crashed is None:
            self._crashed = self.deployer.name
            log.error("thread %s ended unexpectedly; stopping", self.deployer.name)
        return False

    def give_up(self, reason: str) -> None:
        """Something the agent cannot go on without (the outbox): exit 1, systemd restarts."""
        log.error("%s; stopping so that the agent is started again", reason)
        self._crashed = self._crashed or "outbox"
        self.stop_event.set()

    def _thread_crashed(self, args: threading.ExceptHookArgs) -> None:
        """A worker died of a bug: one error line (the traceback with -v), then stop and exit 1
        so that systemd starts a whole agent again rather than one missing a thread."""
        self._crashed = args.thread.name if args.thread else "?"
        log.error(
            "thread %s crashed: %s: %s; stopping",
            self._crashed,
            args.exc_type.__name__,
            args.exc_value,
            exc_info=args.exc_value if log.isEnabledFor(logging.DEBUG) else None,
        )
        self.stop_event.set()

    def _shut_down(self) -> None:
        self.notifier.stopping()
        self.stop_event.set()
        deadline = time.monotonic() + JOIN_S
        # Inference first: it finishes the frame in flight and appends its result.
        workers = (
            self._inference,
            *self.control.threads,
            self._capture,
            self.uplink,
            self._telemetry,
            self.deployer,
        )
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if not self.uplink.flush(timeout=FLUSH_S):
            log.warning("%d results stay in the outbox for next time", self.outbox.queued)
        self.outbox.close()
        self.control.close()
        self.link.stop(
            goodbye=(self.status.topic, self.status.payload("offline")),
            timeout=GOODBYE_S,
        )
        log.info(
            "stopped: %d results, %d frames dropped, %d frames before a model was serving",
            self.results.seq,
            self.frames.dropped,
            self._inference.frames_without_model,
        )
