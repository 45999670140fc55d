"""The window after a switch: the new model serves live frames, and if its error rate or p99
latency crosses the limits, the old session and slot come back and the package is quarantined."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.comms.link import MqttLink
from agent.config import DeployConfig
from agent.contract import Manifest
from agent.delivery.store import ModelStore
from agent.inference.pipeline import HealthStats, ModelSlot
from agent.inference.runtime import ModelSession

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
MIN_SEEN = 10  # frames before the rates mean anything


class Probation:
    def __init__(
        self, models: ModelSlot, health: HealthStats, store: ModelStore,
        status: Callable[..., None], link: MqttLink, halt: threading.Event,
    ):  # fmt: skip
        self._models, self._health, self._store = models, health, store
        self._status, self._link, self._halt = status, link, halt

    def watch(self, manifest: Manifest, old: ModelSession, deploy: DeployConfig) -> None:
        """Returns once the window passed, the agent stops, or the model was rolled back."""
        budgets = (manifest.max_latency_ms, deploy.max_latency_ms)
        limit = min((b for b in budgets if b is not None), default=None)
        self._health.reset()
        deadline = time.monotonic() + deploy.probation_s
        while time.monotonic() < deadline and not self._halt.wait(0.25):
            seen, error_rate, p99 = self._health.snapshot()
            reason = None
            if seen >= MIN_SEEN and error_rate > deploy.max_error_rate:
                reason = f"error rate {error_rate:.0%} > {deploy.max_error_rate:.0%}"
            elif seen >= MIN_SEEN and limit is not None and p99 is not None and p99 > limit:
                reason = f"p99 latency {p99:.2f} ms > {limit:.2f} ms"
            if reason:
                self._roll_back(manifest, old, reason)
                return

    def _roll_back(self, manifest: Manifest, old: ModelSession, reason: str) -> None:
        self._models.swap(old)
        self._store.revert()
        self._store.quarantine(manifest, f"rolled back: {reason}")
        log.error("rolled back %s %s: %s", manifest.name, manifest.version, reason)
        self._status("rolled_back", manifest, reason=reason, restored=old.manifest.version)
        self._link.announce()
