"""The window after a switch: the new model serves live frames, and if its error rate or p99
latency crosses the limits, it is rolled back — the deployer's own ``rollback`` brings the old
session and slot back — and the package is quarantined."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from agent.config import DeployConfig
from agent.contract import Manifest
from agent.inference.pipeline import HealthStats

MIN_SEEN = 10  # frames before the rates mean anything


class RollBack(Protocol):
    def __call__(self, *, reason: str, quarantine: bool) -> object: ...


class Probation:
    def __init__(self, *, health: HealthStats, halt: threading.Event, roll_back: RollBack):
        self._health, self._halt, self._roll_back = health, halt, roll_back

    def watch(self, manifest: Manifest, deploy: DeployConfig) -> dict[str, object] | None:
        """Returns once the window passed (what it saw: ``frames``, ``error_rate``, ``p99_ms``),
        the agent stops or the model was rolled back (None)."""
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
                self._roll_back(reason=reason, quarantine=True)
                return None
        if self._halt.is_set():
            return None
        seen, error_rate, p99 = self._health.snapshot()
        return {"frames": seen, "error_rate": round(error_rate, 4), "p99_ms": p99}
