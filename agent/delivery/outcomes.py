"""How a deployment step can end, besides success, and how each step is reported.

The deployer maps each ending to one outcome:

    Rejected      the package itself is bad: reported and quarantined, never retried
    DeployError   it failed here and now (a download timed out, over a device limit):
                  reported, retried on the next announcement
    Superseded    another announcement arrived mid-download: dropped silently, the new one wins
    Interrupted   the agent is stopping: nothing is known about the candidate, nothing reported

Anything else is a bug; the deployer's boundary (agent.comms.guard) reports it.

Every step is reported as one ``deployment`` event: ``{"type": "deployment", "state": ...,
"model": {"name", "version"} or None, ...}`` (states: downloading, verifying, installed, active,
rolled_back, rejected).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from agent.contract import Manifest
from agent.errors import AgentError, DeployError

Report = Callable[[dict[str, Any]], None]


class Status(Protocol):
    """Reports one step of a deployment as an event, and returns the event."""

    def __call__(self, state: str, manifest: Manifest | None, **extra: Any) -> dict[str, Any]: ...


class Rejected(DeployError):
    """The package itself is bad: quarantine it so it is not retried on every reconnect."""


class Superseded(AgentError):
    """A newer announcement for this or a more specific scope arrived during the download."""


class Interrupted(AgentError):
    """The agent is stopping; the step was abandoned and the candidate is not at fault."""


def model_of(manifest: Manifest | None) -> dict[str, str] | None:
    return {"name": manifest.name, "version": manifest.version} if manifest else None


def deployment_event(state: str, model: dict[str, str] | None, **extra: Any) -> dict[str, Any]:
    return {"type": "deployment", "state": state, "model": model, **extra}


# The deployment steps that end something, as ``edgewise_deployments_total{outcome}`` counts
# them: ``active`` a model started serving (a deployment, or an ``activate`` command), ``passed``
# its probation window passed, ``staged`` a shadow candidate was handed over, ``rolled_back``
# and ``rejected``. Steps under way (downloading, verifying, installed) are not outcomes.
OUTCOMES = ("active", "passed", "staged", "rolled_back", "rejected")


class DeploymentOutcomes:
    """Deployment events by outcome since start; every outcome starts at 0 (a counter that
    appears only on its first increment hides the first one from ``rate()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)

    def count(self, event: dict[str, Any]) -> None:
        """Count ``event`` if it is a deployment step that ends something; ignore anything else."""
        state = event.get("state")
        if event.get("type") == "deployment" and state in self._counts:
            with self._lock:
                self._counts[state] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
