"""Turns deploy announcements into a serving model, or into a rejection reported upstream.

One thread. For the most specific deployment that applies (device, then groups in config order,
then fleet-wide): verify signature, target, size, versions → fetch chunks → verify hashes → probe
the candidate in a child process (load, golden inputs, latency on this board) → stage the slot on
disk → load and health-check it in-process while the old model serves → swap between two frames
→ make the slot current → watch a probation window and roll back if it misbehaves. A failure at
any step leaves the serving model serving; a package that failed is quarantined.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .config import AgentConfig
from .contract import ContractError, Manifest, Topics, TrustStore, parse_semver
from .errors import DeployError, ModelLoadError
from .fetcher import ChunkFetcher
from .link import MqttLink
from .pipeline import HealthStats, ModelSlot
from .probe import ProbeInterrupted, probe_candidate
from .runtime import ModelSession
from .store import InstalledModel, ModelStore, blobs_of, verify_blob

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]


def _same_package(a: Manifest, b: Manifest) -> bool:
    return (a.name, a.version, a.model.sha256) == (b.name, b.version, b.model.sha256)


class Rejected(DeployError):
    """The package itself is bad: quarantine it so it is not retried on every reconnect."""


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
        self._models, self._health, self._report, self._halt = models, health, report, stop
        self._topics = Topics(config.mqtt.topic_root)
        self._fetcher = ChunkFetcher(link, self._topics, config.deploy.chunk_window)
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        device = config.device
        scopes = [f"device:{device.id}", *(f"group:{g}" for g in device.groups), "all"]
        # deploy topic → (rank, target); a lower rank is more specific and wins
        self._scopes = {self._topics.deploy(t): (rank, t) for rank, t in enumerate(scopes)}
        self._wanted: dict[int, tuple[Manifest, bytes]] = {}
        self._refused: set[str] = set()  # digests of payloads already refused this boot

    def reconfigure(self, config: AgentConfig) -> None:
        """Take new limits and budgets (a SIGHUP reload); they apply from the next deployment."""
        self._config = config

    def subscribe(self) -> None:
        for topic in self._scopes:
            self._link.subscribe(topic, self.submit)

    def submit(self, topic: str, payload: bytes) -> None:
        self._inbox.put((topic, payload))

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                topic, payload = self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> None:
        log.debug("deploy message on %s (%d bytes)", topic, len(payload))
        rank, target = self._scopes[topic]
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
        if not self._wanted:
            return
        manifest, envelope = self._wanted[min(self._wanted)]
        serving = self._models.current
        if serving is not None and _same_package(serving.manifest, manifest):
            return
        why = self._store.quarantined(manifest)
        if why is not None:
            log.info("%s %s is quarantined (%s); not retried", manifest.name, manifest.version, why)
            return
        try:
            self._check_versions(manifest, serving.manifest if serving else None)
            self._deploy(manifest, envelope)
        except Rejected as exc:
            self._store.quarantine(manifest, str(exc))
            self._reject(manifest, str(exc))
        except ProbeInterrupted:
            # Not the candidate's fault: its verified chunks stay on disk and the retained
            # announcement brings it back at the next start.
            log.info("stopping during the probe of %s %s", manifest.name, manifest.version)
        except (DeployError, ContractError, ModelLoadError, OSError) as exc:
            self._reject(manifest, str(exc))

    def _check_versions(self, manifest: Manifest, serving: Manifest | None) -> None:
        if parse_semver(__version__) < parse_semver(manifest.min_agent_version):
            raise DeployError(f"needs agent >= {manifest.min_agent_version}, this is {__version__}")
        if manifest.model.size > self._config.deploy.max_model_bytes:
            raise DeployError(
                f"model is {manifest.model.size} bytes, over the device limit of "
                f"{self._config.deploy.max_model_bytes} (deploy.max_model_bytes)"
            )
        if serving is None or serving.name != manifest.name or manifest.rollback:
            return
        if manifest.semver <= serving.semver:
            raise Rejected(
                f"version {manifest.version} is not newer than serving {serving.version}: "
                "refused as a replay (a signed rollback can name an older version)"
            )

    def _status(self, state: str, manifest: Manifest | None, **extra: Any) -> None:
        model = {"name": manifest.name, "version": manifest.version} if manifest else None
        self._report({"type": "deployment", "state": state, "model": model, **extra})

    def _reject(self, manifest: Manifest | None, reason: str) -> None:
        log.error("rejected deployment: %s", reason)
        self._status("rejected", manifest, reason=reason)

    def _deploy(self, manifest: Manifest, envelope: bytes) -> None:
        installed = self._store.installed(manifest, self._trust)
        slot = installed.slot if installed else self._download_and_probe(manifest, envelope)
        candidate = InstalledModel(manifest, envelope, slot)
        try:
            session = ModelSession(candidate.model_path, manifest, self._config.runtime)
            session.check_golden(candidate.golden_path)
        except ModelLoadError as exc:
            raise Rejected(str(exc)) from exc
        old = self._models.swap(session)  # between two frames: the next frame uses the new one
        self._store.activate(slot)
        log.info("serving %s %s", manifest.name, manifest.version)
        self._status("active", manifest)
        self._link.announce()
        if old is not None and self._config.deploy.probation_s > 0:
            self._probation(manifest, old)

    def _download_and_probe(self, manifest: Manifest, envelope: bytes) -> Any:
        deploy = self._config.deploy
        total = sum(b.size for b in blobs_of(manifest))
        files = {}
        state = {"base": 0, "size": 0, "shown": -10}

        def progress(done: int, of: int) -> None:
            percent = int(100 * (state["base"] + state["size"] * done / of) / total)
            if percent >= state["shown"] + 10:  # every 10%: status is retained, keep it calm
                state["shown"] = percent
                self._status("downloading", manifest, percent=percent)

        self._status("downloading", manifest, percent=0)
        chunks = {"fetched": 0, "resumed": 0, "duplicates": 0}
        for blob in blobs_of(manifest):
            state["size"] = blob.size
            files[blob.path] = self._store.partial_path(blob)
            stats = self._fetcher.fetch(
                blob, files[blob.path], deploy.fetch_timeout, self._halt, progress
            )
            for key in chunks:
                chunks[key] += getattr(stats, key)
            state["base"] += blob.size
        self._status("verifying", manifest)
        try:
            for blob in blobs_of(manifest):
                verify_blob(files[blob.path], blob)
            golden = files.get(manifest.golden.path) if manifest.golden else None
            report = probe_candidate(
                files[manifest.model.path], manifest, golden, self._config.runtime,
                timeout_s=deploy.probe_timeout, memory_limit_mb=deploy.probe_memory_mb,
                stop=self._halt,
            )  # fmt: skip
        except (ContractError, DeployError) as exc:
            for path in files.values():
                path.unlink(missing_ok=True)
            raise Rejected(str(exc)) from exc
        figures = (
            f"p50 {report.latency_p50_ms:.2f} ms, p99 {report.latency_p99_ms:.2f} ms, "
            f"peak RSS {report.peak_rss_mb:.0f} MB"
        )
        budgets = [b for b in (manifest.max_latency_ms, deploy.max_latency_ms) if b is not None]
        if budgets and report.latency_p99_ms > min(budgets):
            raise Rejected(
                f"too slow for this device: p99 over the {min(budgets):.2f} ms budget ({figures})"
            )
        if deploy.max_memory_mb is not None and report.peak_rss_mb > deploy.max_memory_mb:
            raise Rejected(
                f"too big for this device: peak RSS over the {deploy.max_memory_mb:.0f} MB budget "
                f"({figures})"
            )
        slot = self._store.stage(manifest, envelope, files)
        self._status(
            "installed", manifest, latency_p50_ms=round(report.latency_p50_ms, 3),
            latency_p99_ms=round(report.latency_p99_ms, 3),
            peak_rss_mb=round(report.peak_rss_mb, 1), chunks=chunks,
        )  # fmt: skip
        return slot

    def _probation(self, manifest: Manifest, old: ModelSession) -> None:
        deploy = self._config.deploy
        limit = min(
            (b for b in (manifest.max_latency_ms, deploy.max_latency_ms) if b is not None),
            default=None,
        )
        self._health.reset()
        deadline = time.monotonic() + deploy.probation_s
        while time.monotonic() < deadline and not self._halt.wait(0.25):
            seen, error_rate, p99 = self._health.snapshot()
            reason = None
            if seen >= 10 and error_rate > deploy.max_error_rate:
                reason = f"error rate {error_rate:.0%} > {deploy.max_error_rate:.0%}"
            elif seen >= 10 and limit is not None and p99 is not None and p99 > limit:
                reason = f"p99 latency {p99:.2f} ms > {limit:.2f} ms"
            if reason:
                self._models.swap(old)
                self._store.revert()
                self._store.quarantine(manifest, f"rolled back: {reason}")
                log.error("rolled back %s %s: %s", manifest.name, manifest.version, reason)
                self._status("rolled_back", manifest, reason=reason, restored=old.manifest.version)
                self._link.announce()
                return
