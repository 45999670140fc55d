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
from .pipeline import CaptureWorker, FrameSlot, HealthStats, InferenceWorker, ModelSlot
from .runtime import Inference, ModelSession
from .sources import Frame, FrameSource
from .store import ModelStore

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
        self._seq = 0
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
        self.deployer = Deployer(
            config, self.link, self.trust, self.store, self.models, self.health,
            self.report_event, self.stop_event,
        )  # fmt: skip
        self.frames = FrameSlot(block=config.source.kind == "video" and not config.source.realtime)
        self._capture = CaptureWorker(FrameSource(config.source), self.frames, self.stop_event)
        self._inference = InferenceWorker(
            self.frames, self.models, self._publish_result, self.stop_event, self.health
        )

    def _status(self, state: str) -> bytes:
        session = self.models.current
        model = (
            {"name": session.manifest.name, "version": session.manifest.version}
            if session
            else None
        )
        return _json(
            {
                "state": state,
                "device": self._device,
                "agent_version": __version__,
                "boot_id": self.boot_id,
                "model": model,
                "source": self.config.source.uri,
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
        self._seq += 1
        now = time.time()
        result = {
            "id": f"{self._device}:{self.boot_id}:{self._seq}",
            "device": self._device,
            "seq": self._seq,
            "source": self.config.source.uri,
            "frame": frame.index,
            "captured_at": frame.captured_at,
            "published_at": now,
            "model": {"name": session.manifest.name, "version": session.manifest.version},
            "label": inference.top.label,
            "score": round(inference.top.score, 5),
            "predictions": [
                {"label": p.label, "score": round(p.score, 5)} for p in inference.predictions
            ],
            "latency_ms": {
                "preprocess": round(inference.preprocess_ms, 3),
                "inference": round(inference.inference_ms, 3),
                "total": round((now - frame.captured_at) * 1e3, 3),
            },
        }
        self.link.publish(self._topics.results(self._device), _json(result), qos=1)
        if self._max_results is not None and self._seq >= self._max_results:
            self.stop_event.set()

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
        self._capture.start()
        self._inference.start()
        try:
            while not self.stop_event.is_set() and self._inference.is_alive():
                self.stop_event.wait(0.5)
        finally:
            self.stop_event.set()
            for worker in (self._capture, self._inference, self.deployer):
                worker.join(timeout=5)
            self.link.stop(goodbye=(self._topics.status(self._device), self._status("offline")))
            log.info(
                "stopped: %d results, %d frames dropped, %d frames before a model was serving",
                self._seq, self.frames.dropped, self._inference.frames_without_model,
            )  # fmt: skip
        return 0
