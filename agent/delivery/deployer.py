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
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.comms.bounded import Mailbox, RecentSet
from agent.comms.guard import Boundary, Oversize
from agent.comms.link import MqttLink
from agent.config import AgentConfig
from agent.contract import (
    BlobSpec,
    ContractError,
    Manifest,
    Package,
    Topics,
    TrustStore,
    summarise,
)
from agent.delivery.admission import check_admission, check_packets
from agent.delivery.candidate import Candidates
from agent.delivery.fetcher import ChunkFetcher
from agent.delivery.outcomes import (
    Interrupted,
    Rejected,
    Report,
    Superseded,
    deployment_event,
    model_of,
)
from agent.delivery.probation import Probation
from agent.delivery.requests import Request
from agent.delivery.serving import Serving, same_package
from agent.delivery.store import ModelStore
from agent.errors import AgentError, DeployerBusy, DeployError, ModelLoadError
from agent.inference.pipeline import HealthStats, ModelSlot

log = logging.getLogger(__name__)

REFUSED_MEMORY = 1024  # digests of refused payloads remembered (the oldest forgotten)
IDLE_TIDY_S = 10.0  # idle and connected this long: no download is in progress, none will resume
MAX_REQUESTS = 8  # operations waiting for the deployer's thread at once; more are refused
REQUEST_TIMEOUT_S = 60.0  # how long an operation waits for a deployment in progress by default
REQUEST_KEY = "\x00request:"  # inbox keys of operations: no MQTT topic holds a NUL
IN_PROGRESS = ("downloading", "verifying", "installed")  # states of a deployment under way

T = TypeVar("T")


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
        stage: Callable[[Package], object] | None = None,
    ):
        """``stage``: takes a verified, probed, installed package whose manifest says
        ``mode: shadow`` (the shadow runner); without it such packages are refused."""
        super().__init__(name="deployer", daemon=True)
        self._stage = stage
        self._config, self._link, self._trust, self._store = config, link, trust, store
        self._models, self._report, self._halt = models, report, stop
        self.boundary = Boundary("deployer", self._publish_rejection)
        self._topics = topics = Topics(config.mqtt.topic_root)
        fetcher = ChunkFetcher(
            link, topics, config.deploy.chunk_window, self.boundary, device=config.device.id
        )
        self._candidates = Candidates(store, fetcher, self._status, stop)
        self._serving = Serving(
            store=store,
            trust=trust,
            models=models,
            runtime=lambda: self._config.runtime,
            status=self._status,
            report=report,
            announce=link.announce,
        )
        self._probation = Probation(health=health, halt=stop, roll_back=self.rollback)
        device = config.device
        scopes = [f"device:{device.id}", *(f"group:{g}" for g in device.groups), "all"]
        # deploy topic → (rank, target); a lower rank is more specific and wins
        self._scopes = {topics.deploy(t): (rank, t) for rank, t in enumerate(scopes)}
        self._inbox: Mailbox[bytes | Oversize | Request[Any]] = Mailbox(
            max_keys=len(self._scopes) + MAX_REQUESTS
        )
        self._request_ids = itertools.count(1)
        self._requests_lock = threading.Lock()
        self._wanted: dict[int, tuple[Manifest, bytes]] = {}
        self._refused = RecentSet(REFUSED_MEMORY)  # digests of payloads already refused
        self._resume = False  # a download was superseded: look again once the inbox is empty
        self._idle_since = time.monotonic()
        self._progress: dict[str, Any] | None = None  # the deployment under way, for status()

    def reconfigure(self, config: AgentConfig) -> None:
        """Take new limits and budgets (a SIGHUP reload); they apply from the next deployment."""
        self._config = config

    # --- operations: boot, activate, rollback, status -----------------------------------------

    def boot(self) -> None:
        """Serve the installed package (``current``, else ``previous``) before anything arrives,
        verified, loaded and golden-checked as a deployment's; with none that passes, the device
        waits for a deployment."""
        self._serving.boot()

    def activate(self, version: str, *, timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Serve the installed ``version`` (of the serving model's name) that a slot still holds
        intact: re-verified, golden-checked, swapped in between two frames, made current.
        Returns the ``active`` event it reported. NotInstalled, or ActivationError when it fails
        verification or its golden check or is quarantined (reported as ``rejected``; what
        served keeps serving); DeployerBusy when a deployment held the deployer ``timeout`` s."""
        return self._call(lambda: self._serving.activate(version), timeout)

    def rollback(
        self,
        *,
        reason: str = "rollback requested",
        quarantine: bool = False,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Serve ``previous`` again and make it current; returns the ``rolled_back`` event.
        ``quarantine``: never retry the package rolled back (probation's verdict).
        ActivationError when there is no previous or it cannot serve; DeployerBusy as for
        :meth:`activate`."""
        return self._call(lambda: self._serving.roll_back(reason, quarantine=quarantine), timeout)

    def installed(self, version: str) -> Package:
        """The installed ``version`` of the serving model's name, re-verified and not
        quarantined (for shadowing it); NotInstalled or ActivationError naming why not."""
        return self._serving.package(version)

    def status(self) -> dict[str, Any]:
        """``serving``, ``current``, ``previous`` (name and version, or None), ``installed`` (every
        slot's), ``deployment`` (the one under way: model, state, percent; None when idle) and
        ``quarantined`` (name, version, reason). Read from any thread without waiting: it
        changes nothing, and waiting would never see a deployment under way."""
        return {**self._serving.describe(), "deployment": self._progress}

    def _call(self, operation: Callable[[], T], timeout: float) -> T:
        """``operation()`` on the deployer's thread when it runs (directly before ``start()``,
        after it ended, and on the thread itself)."""
        if threading.current_thread() is self or not self.is_alive():
            return operation()
        request = Request(operation)
        with self._requests_lock:
            waiting = sum(1 for key in self._inbox.pending() if key.startswith(REQUEST_KEY))
            if waiting >= MAX_REQUESTS:
                raise DeployerBusy(f"{waiting} operations already wait for the deployer")
            self._inbox.put(f"{REQUEST_KEY}{next(self._request_ids)}", request)
        return request.wait(timeout, self.is_alive)

    # --- deploy messages -----------------------------------------------------------------------

    def subscribe(self) -> None:
        for topic in self._scopes:
            self._link.subscribe(topic, self.boundary.wrap(self.submit))

    def submit(self, topic: str, payload: bytes) -> None:
        """On paho's thread: drop what is too big, keep the latest per topic, nothing more."""
        if topic not in self._scopes:
            self._not_a_deploy_topic(topic)
            return
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
            key, value = item
            if isinstance(value, Request):
                value.run()
            else:
                self.boundary.call(self._handle, key, value)
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

    def _not_a_deploy_topic(self, topic: str) -> None:
        self._reject(None, f"{topic}: not a deploy topic of this device; ignored")

    def _handle(self, topic: str, payload: bytes | Oversize) -> None:
        scope = self._scopes.get(topic)
        if scope is None:
            self._not_a_deploy_topic(topic)
            return
        rank, target = scope
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
        try:
            self._decide()
        finally:
            self._progress = None

    def _decide(self) -> None:
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
        if serving is not None and same_package(serving.manifest, manifest):
            return
        why = self._store.quarantined(manifest)
        if why is not None:
            log.info("%s %s is quarantined (%s); not retried", manifest.name, manifest.version, why)
            return
        check_admission(manifest, self._config.deploy, serving.manifest if serving else None)
        if self._link.capabilities.protocol == "5":  # only MQTT 5 announces the device's cap
            check_packets(manifest, self._link.max_packet, self._chunk_topic(manifest))
        self._deploy(manifest, envelope, rank)

    def _chunk_topic(self, manifest: Manifest) -> Callable[[BlobSpec], str]:
        """The topic of a blob's last chunk (the longest index) in the manifest's delivery."""
        if manifest.delivery == "request":
            device = self._config.device.id
            return lambda b: self._topics.inbox_chunk(device, b.sha256, len(b.chunks) - 1)
        return lambda b: self._topics.blob_chunk(b.sha256, len(b.chunks) - 1)

    def _superseded(self, rank: int) -> bool:
        """A message waits that changes this or a more specific scope's deployment."""
        for topic, payload in self._inbox.pending().items():
            scope = self._scopes.get(topic)
            if scope is None or scope[0] > rank or not isinstance(payload, bytes):
                continue  # an operation, less specific, or too big (it will only be rejected)
            held = self._wanted.get(scope[0])
            if held is not None and held[1] == payload:
                continue  # the same announcement again (a reconnect redelivers it)
            if payload and hashlib.sha256(payload).hexdigest() in self._refused:
                continue
            return True
        return False

    def _status(self, state: str, manifest: Manifest | None, **extra: Any) -> dict[str, Any]:
        event = deployment_event(state, model_of(manifest), **extra)
        if state in IN_PROGRESS:
            self._progress = {k: v for k, v in event.items() if k != "type"}
        self._report(event)
        return event

    def _reject(self, manifest: Manifest | None, reason: str) -> None:
        self.boundary.reject(reason, model=model_of(manifest))

    def _publish_rejection(self, reason: str, detail: dict[str, Any]) -> None:
        """The boundary's sink: every rejection it lets through, as an event and in the status."""
        log.error("rejected deployment: %s", reason)
        model = detail.pop("model", None)
        self._report(deployment_event("rejected", model, reason=reason, **detail))

    def _deploy(self, manifest: Manifest, envelope: bytes, rank: int) -> None:
        installed = self._store.installed(manifest, self._trust)
        if installed:
            slot = installed.root
        else:
            slot = self._candidates.build(
                manifest, envelope, self._config, lambda: self._superseded(rank)
            )
        package = Package(slot, envelope, manifest)
        if manifest.mode == "shadow":
            self._shadow(package)
            return
        try:
            session = self._serving.open(package)
        except ModelLoadError as exc:
            if not installed:
                self._store.discard(slot)  # a staged slot that failed is not kept
            raise Rejected(str(exc)) from exc
        deploy = self._config.deploy
        self._serving.switch(package, session, keep_displaced=deploy.probation_s > 0)
        if self._serving.displaced is None:
            self._status("passed", manifest, probation_s=0)  # no window: live is passed
            return
        self._progress = {"state": "probation", "model": model_of(manifest)}
        try:
            seen = self._probation.watch(manifest, deploy)
        finally:
            self._serving.displaced = None
        if seen is not None:  # a rollout counts a device once its window passed
            self._status("passed", manifest, probation_s=deploy.probation_s, **seen)

    def _shadow(self, package: Package) -> None:
        """Hand an installed ``mode: shadow`` package to the shadow runner; it never serves
        until promoted (``activate``)."""
        if self._stage is None:
            raise DeployError("this agent runs no shadow evaluation; push it without --shadow")
        try:
            self._stage(package)
        except AgentError as exc:  # the runner cannot load it (ShadowError): refused, not a bug
            raise Rejected(str(exc)) from exc
        self._status("staged", package.manifest)
