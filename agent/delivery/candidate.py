"""A candidate package from announcement to staged slot: download its blobs into ``incoming/``,
verify them whole, probe the model in a child process, hold it to this board's budgets, stage
it. Nothing here touches the serving model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from agent.config import AgentConfig, DeployConfig
from agent.contract import ContractError, Manifest
from agent.delivery.fetcher import Cancelled, ChunkFetcher
from agent.delivery.outcomes import Rejected, Status
from agent.delivery.probe import ProbeReport, probe_candidate
from agent.delivery.store import ModelStore, blobs_of, verify_blob
from agent.errors import DeployError
from agent.inference.backends import CHOICE


class Candidates:
    def __init__(
        self, store: ModelStore, fetcher: ChunkFetcher, status: Status, halt: threading.Event
    ):
        self._store, self._fetcher, self._status, self._halt = store, fetcher, status, halt

    def build(
        self, manifest: Manifest, envelope: bytes, config: AgentConfig, cancelled: Cancelled
    ) -> Path:
        """The staged slot of a candidate that passed every check; Rejected when it is bad."""
        files, chunks = self._download(manifest, config.deploy, cancelled)
        self._status("verifying", manifest)
        try:
            for blob in blobs_of(manifest):
                verify_blob(files[blob.path], blob)
            golden = files.get(manifest.golden.path) if manifest.golden else None
            report = probe_candidate(
                files[manifest.model.path],
                manifest,
                golden,
                config.runtime,
                timeout_s=config.deploy.probe_timeout,
                memory_limit_mb=config.deploy.probe_memory_mb,
                stop=self._halt,
            )
        except (ContractError, DeployError) as exc:
            raise Rejected(str(exc)) from exc
        _check_budgets(manifest, report, config.deploy)
        choice = {"backend": report.backend, "backends": report.backends}
        slot = self._store.stage(manifest, envelope, files, notes={CHOICE: json.dumps(choice)})
        self._status(
            "installed",
            manifest,
            latency_p50_ms=round(report.latency_p50_ms, 3),
            latency_p99_ms=round(report.latency_p99_ms, 3),
            peak_rss_mb=round(report.peak_rss_mb, 1),
            chunks=chunks,
            delivery=manifest.delivery,
            **choice,
        )
        return slot

    def _download(
        self, manifest: Manifest, deploy: DeployConfig, cancelled: Cancelled
    ) -> tuple[dict[str, Path], dict[str, int]]:
        blobs = blobs_of(manifest)
        self._store.prune_incoming(keep=blobs)  # incoming/ holds this download and nothing else
        progress = _Progress(sum(b.size for b in blobs), manifest, self._status)
        self._status("downloading", manifest, percent=0)
        files: dict[str, Path] = {}
        chunks = {"fetched": 0, "resumed": 0, "duplicates": 0}
        for blob in blobs:
            progress.next_blob(blob.size)
            files[blob.path] = self._store.partial_path(blob)
            stats = self._fetcher.fetch(
                blob,
                files[blob.path],
                deploy.fetch_timeout,
                self._halt,
                progress,
                cancelled,
                delivery=manifest.delivery,  # the transport: retained, request or http
                deploy=deploy,
            )
            for key in chunks:
                chunks[key] += getattr(stats, key)
        return files, chunks


class _Progress:
    """``downloading`` steps every 10% over all blobs: the status is retained, keep it calm."""

    def __init__(self, total: int, manifest: Manifest, status: Status):
        self._total, self._manifest, self._status = total, manifest, status
        self._base, self._size, self._shown = 0, 0, -10

    def next_blob(self, size: int) -> None:
        self._base += self._size
        self._size = size

    def __call__(self, done: int, of: int) -> None:
        percent = int(100 * (self._base + self._size * done / of) / self._total)
        if percent >= self._shown + 10:
            self._shown = percent
            self._status("downloading", self._manifest, percent=percent)


def _check_budgets(manifest: Manifest, report: ProbeReport, deploy: DeployConfig) -> None:
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
