"""Turns deploy announcements into a serving model, or into a rejection reported upstream.

One thread. For the most specific deployment that applies (device, then groups in config order,
then fleet-wide): verify signature, target, size, versions → fetch chunks → verify hashes → probe
the candidate in a child process (load, golden inputs, latency on this board) → stage the slot on
disk → load and health-check it in-process while the old model serves → swap between two frames
→ make the slot current → watch a probation window and roll back if it misbehaves. A failure at
any step leaves the serving model serving; a package that failed is quarantined.

What the broker delivers is held at arm's length: paho's callback drops a message over
``deploy.max_manifest_bytes`` before it is queued and keeps only the latest message per deploy
topic (they are retained: only the latest matters), and every message is handled inside a
Boundary (agent.comms.guard), so nothing a message causes can end this thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

from agent.comms.bounded import Mailbox, RecentSet
from agent.comms.guard import Boundary, Oversize
from agent.comms.link import MqttLink
from agent.config import AgentConfig
from agent.contract import ContractError, Manifest, Package, Topics, TrustStore, summarise
from agent.delivery.admission import check_admission
from agent.delivery.candidate import Candidates
from agent.delivery.fetcher import ChunkFetcher
from agent.delivery.outcomes import Interrupted, Rejected, Superseded
from agent.delivery.probation import Probation, Report
from agent.delivery.store import ModelStore
from agent.errors import DeployError, ModelLoadError
from agent.inference.pipeline import HealthStats, ModelSlot
from agent.inference.runtime import ModelSession

log = logging.getLogger(__name__)

REFUSED_MEMORY = 1024  # digests of refused payloads remembered (the oldest forgotten)
IDLE_TIDY_S = 10.0  # idle and connected this long: no download is in progress, none will resume


def _same_package(a: Manifest, b: Manifest) -> bool:
    return (a.name, a.version, a.model.sha256) == (b.name, b.version, b.model.sha256)


def _model_of(manifest: Manifest | None) -> dict[str, str] | None:
    return {"name": manifest.name, "version": manifest.version} if manifest else None


class Deployer(threading.Thread):
    def __init__(
        self,
        config: AgentConfig,
        link: MqttLink,
        trust: TrustStore,
        store: ModelStore,
        models: ModelSlot,
        health: HealthStats,
        report: Report,
        stop: threading.Event,
    ):
        super().__init__(name="deployer", daemon=True)
        self._config, self._link, self._trust, self._store = config, link, trust, store
        self._models, self._report, self._halt = models, report, stop
        self.boundary = Boundary("deployer", self._publish_rejection)
        topics = Topics(config.mqtt.topic_root)
        fetcher = ChunkFetcher(link, topics, config.deploy.chunk_window, self.boundary)
        self._candidates = Candidates(store, fetcher, self._status, stop)
        self._probation = Probation(models, health, store, self._status, link, stop)
        device = config.device
        scopes = [f"device:{device.id}", *(f"group:{g}" for g in device.groups), "all"]
        # deploy topic → (rank, target); a lower rank is more specific and wins
        self._scopes = {topics.deploy(t): (rank, t) for rank, t in enumerate(scopes)}
        self._inbox: Mailbox[bytes | Oversize] = Mailbox(max_keys=len(self._scopes))
        self._wanted: dict[int, tuple[Manifest, bytes]] = {}
        self._refused = RecentSet(REFUSED_MEMORY)  # digests of payloads already refused
        self._resume = False  # a download was superseded: look again once the inbox is empty
        self._idle_since = time.monotonic()

    def reconfigure(self, config: AgentConfig) -> None:
        """Take new limits and budgets (a SIGHUP reload); they apply from the next deployment."""
        self._config = config

    def boot(self) -> None:
        """Serve the installed package (``current``, else ``previous``) before anything arrives;
        with none, or none that verifies and loads, the device waits for a deployment."""
        try:
            installed = self._store.current(self._trust)
        except (ContractError, OSError) as exc:
            log.error("installed model failed verification, waiting for a new one: %s", exc)
            return
        if installed is None:
            log.info("no model installed yet; waiting for a deployment")
            return
        try:
            session = ModelSession(installed.model_path, installed.manifest, self._config.runtime)
        except ModelLoadError as exc:
            log.error("%s", exc)
            return
        self._models.swap(session)
        log.info("serving installed %s %s", installed.manifest.name, installed.manifest.version)

    def subscribe(self) -> None:
        for topic in self._scopes:
            self._link.subscribe(topic, self.boundary.wrap(self.submit))

    def submit(self, topic: str, payload: bytes) -> None:
        """On paho's thread: drop what is too big, keep the latest per topic, nothing more."""
        limit = self._config.deploy.max_manifest_bytes
        if len(payload) > limit:
            dropped = Oversize(len(payload), summarise(payload), limit, "deploy.max_manifest_bytes")
            self._inbox.put(topic, dropped)
        else:
            self._inbox.put(topic, payload)

    def run(self) -> None:
        while not self._halt.is_set():
            item = self._inbox.get(timeout=0.5)
            if item is None:
                self._tidy_when_idle()
                continue
            self.boundary.call(self._handle, *item)
            if self._resume and not len(self._inbox):
                self.boundary.call(self._reconsider)
            self._idle_since = time.monotonic()

    def _tidy_when_idle(self) -> None:
        """Partial downloads left by an earlier run that no announcement came back for."""
        if time.monotonic() - self._idle_since < IDLE_TIDY_S or not self._link.connected.is_set():
            return
        self._idle_since = float("inf")  # once per idle spell
        for name in self._store.prune_incoming():
            log.info("deleted abandoned partial download %s", name)

    def _handle(self, topic: str, payload: bytes | Oversize) -> None:
        rank, target = self._scopes[topic]
        if isinstance(payload, Oversize):
            self._reject(None, f"{topic}: {payload.describe()}")
            return
        log.debug("deploy message on %s (%d bytes)", topic, len(payload))
        if not payload:  # an empty retained message withdraws this scope's deployment
            self._wanted.pop(rank, None)
            self._reconsider()
            return
        digest = hashlib.sha256(payload).hexdigest()
        if digest in self._refused:
            return
        try:
            manifest = self._trust.verify(payload)
            self._check_target(manifest, target)
        except (ContractError, DeployError) as exc:
            self._refused.add(digest)
            self._reject(None, f"{topic}: {exc}")
            return
        self._wanted[rank] = (manifest, payload)
        self._reconsider()

    def _check_target(self, manifest: Manifest, target: str) -> None:
        if manifest.target is not None and manifest.target != target:
            raise DeployError(
                f"{manifest.name} {manifest.version} is signed for {manifest.target}, not {target}"
            )

    def _reconsider(self) -> None:
        """Pursue the deployment that wins now, and map how that ended. Partial downloads are
        deleted (before the outcome is reported) unless the step was only cut short."""
        self._resume = False
        if not self._wanted:
            self._store.prune_incoming()
            return
        manifest, envelope = self._wanted[min(self._wanted)]
        failure: Exception | None = None
        try:
            self._pursue(manifest, envelope, min(self._wanted))
        except Superseded:
            self._resume = True  # its chunks stay on disk until the next decision
            log.info("%s %s superseded mid-download", manifest.name, manifest.version)
            return
        except Interrupted:
            # Not the candidate's fault: its verified chunks stay on disk and the retained
            # announcement brings it back at the next start.
            log.info("stopping during the deployment of %s %s", manifest.name, manifest.version)
            return
        except Rejected as exc:
            self._store.quarantine(manifest, str(exc))
            failure = exc
        except (DeployError, ContractError, ModelLoadError, OSError) as exc:
            failure = exc
        except Exception:
            # A bug this package reaches: the boundary reports it; retrying would reach it again.
            self._store.quarantine(manifest, "internal error")
            self._store.prune_incoming()
            raise
        self._store.prune_incoming()
        if failure is not None:
            self._reject(manifest, str(failure))

    def _pursue(self, manifest: Manifest, envelope: bytes, rank: int) -> None:
        serving = self._models.current
        if serving is not None and _same_package(serving.manifest, manifest):
            return
        why = self._store.quarantined(manifest)
        if why is not None:
            log.info("%s %s is quarantined (%s); not retried", manifest.name, manifest.version, why)
            return
        check_admission(manifest, self._config.deploy, serving.manifest if serving else None)
        self._deploy(manifest, envelope, rank)

    def _superseded(self, rank: int) -> bool:
        """A message waits that changes this or a more specific scope's deployment."""
        for topic, payload in self._inbox.pending().items():
            other, _ = self._scopes[topic]
            if other > rank or not isinstance(payload, bytes):
                continue  # less specific, or too big (it will only be rejected)
            held = self._wanted.get(other)
            if held is not None and held[1] == payload:
                continue  # the same announcement again (a reconnect redelivers it)
            if payload and hashlib.sha256(payload).hexdigest() in self._refused:
                continue
            return True
        return False

    def _status(self, state: str, manifest: Manifest | None, **extra: Any) -> None:
        self._report({"type": "deployment", "state": state, "model": _model_of(manifest), **extra})

    def _reject(self, manifest: Manifest | None, reason: str) -> None:
        self.boundary.reject(reason, model=_model_of(manifest))

    def _publish_rejection(self, reason: str, detail: dict[str, Any]) -> None:
        """The boundary's sink: every rejection it lets through, as an event and in the status."""
        log.error("rejected deployment: %s", reason)
        self._report({"type": "deployment", "state": "rejected", "reason": reason,
                      "model": detail.pop("model", None), **detail})  # fmt: skip

    def _deploy(self, manifest: Manifest, envelope: bytes, rank: int) -> None:
        installed = self._store.installed(manifest, self._trust)
        if installed:
            slot = installed.root
        else:
            slot = self._candidates.build(
                manifest, envelope, self._config, lambda: self._superseded(rank)
            )
        candidate = Package(slot, envelope, manifest)
        try:
            session = ModelSession(candidate.model_path, manifest, self._config.runtime)
            session.check_golden(candidate.golden_path)
        except ModelLoadError as exc:
            if not installed:
                self._store.discard(slot)  # a staged slot that failed is not kept
            raise Rejected(str(exc)) from exc
        old = self._models.swap(session)  # between two frames: the next frame uses the new one
        self._store.activate(slot)
        log.info("serving %s %s", manifest.name, manifest.version)
        self._status("active", manifest)
        self._link.announce()
        if old is not None and self._config.deploy.probation_s > 0:
            self._probation.watch(manifest, old, self._config.deploy)
