"""How a deployment step can end, besides success. The deployer maps each to one outcome:

    Rejected      the package itself is bad: reported and quarantined, never retried
    DeployError   it failed here and now (a download timed out, over a device limit):
                  reported, retried on the next announcement
    Superseded    another announcement arrived mid-download: dropped silently, the new one wins
    Interrupted   the agent is stopping: nothing is known about the candidate, nothing reported

Anything else is a bug; the deployer's boundary (agent.comms.guard) reports it.
"""

from __future__ import annotations

from agent.errors import AgentError, DeployError


class Rejected(DeployError):
    """The package itself is bad: quarantine it so it is not retried on every reconnect."""


class Superseded(AgentError):
    """A newer announcement for this or a more specific scope arrived during the download."""


class Interrupted(AgentError):
    """The agent is stopping; the step was abandoned and the candidate is not at fault."""
