"""Turns a deploy announcement into a serving model, or into a rejection reported upstream.

verify signature → check version and agent version → fetch chunks → verify and install on disk →
load and warm up the session → swap it in between two frames. Any failure leaves the serving model
untouched.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import __version__
from .config import AgentConfig
from .contract import ContractError, Manifest, Topics, TrustStore, parse_semver
from .errors import DeployError, ModelLoadError
from .fetcher import ChunkFetcher
from .link import MqttLink
from .pipeline import ModelSlot
from .runtime import ModelSession
from .store import ModelStore

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]


class Deployer(threading.Thread):
    def __init__(
        self,
        config: AgentConfig,
        link: MqttLink,
        trust: TrustStore,
        store: ModelStore,
        models: ModelSlot,
        report: EventSink,
        stop: threading.Event,
    ):
        super().__init__(name="deployer", daemon=True)
        self._config, self._link, self._trust, self._store = config, link, trust, store
        self._models, self._report, self._halt = models, report, stop
        self._topics = Topics(config.mqtt.topic_root)
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def deploy_topics(self) -> list[str]:
        device = self._config.device
        return [
            self._topics.deploy_device(device.id),
            *(self._topics.deploy_group(g) for g in device.groups),
            self._topics.deploy_all(),
        ]

    def subscribe(self) -> None:
        for topic in self.deploy_topics():
            self._link.subscribe(topic, self.submit)

    def submit(self, topic: str, payload: bytes) -> None:
        if payload:  # an empty retained message clears a deployment; nothing to install
            self._inbox.put((topic, payload))

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                topic, envelope = self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.deploy(envelope)
            except (ContractError, DeployError, ModelLoadError, OSError) as exc:
                log.error("rejected package from %s: %s", topic, exc)
                self._report({"type": "deploy_rejected", "topic": topic, "reason": str(exc)})

    def deploy(self, envelope: bytes) -> None:
        manifest = self._trust.verify(envelope)
        if not self._is_wanted(manifest):
            return
        log.info("fetching %s %s (%d bytes)", manifest.name, manifest.version, manifest.model.size)
        partial = self._store.partial_path(manifest)
        fetcher = ChunkFetcher(self._link, self._topics, manifest.model)
        body = fetcher.fetch(partial, self._config.deploy.fetch_timeout, self._halt)
        installed = self._store.install(manifest, envelope, body)
        session = ModelSession(installed.model_path, manifest, self._config.runtime)
        self._models.swap(session)
        log.info("serving %s %s", manifest.name, manifest.version)
        self._report({"type": "deployed", "model": manifest.name, "version": manifest.version})
        self._link.announce()

    def _is_wanted(self, manifest: Manifest) -> bool:
        if parse_semver(__version__) < parse_semver(manifest.min_agent_version):
            raise DeployError(
                f"{manifest.name} {manifest.version} needs agent >= {manifest.min_agent_version}, "
                f"this is {__version__}"
            )
        current = self._models.current
        if current is None or current.manifest.name != manifest.name:
            return True
        if manifest.semver == current.manifest.semver:
            log.debug("%s %s already serving", manifest.name, manifest.version)
            return False
        if manifest.semver < current.manifest.semver:
            raise DeployError(
                f"{manifest.name} {manifest.version} is older than serving "
                f"{current.manifest.version}: refused as a replay"
            )
        return True
