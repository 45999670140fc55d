"""``edgewise withdraw TARGET``: clear the retained deploy manifest of a device, a group or the
fleet, then gc the chunks nothing references any more.

Devices keep serving what they have: an empty retained message on a deploy topic makes the
agent forget that scope's deployment (a more general one, e.g. ``all``, then applies if there
is one); the deployment just no longer reaches new or returning devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import paho.mqtt.client as mqtt

from agent.contract import Topics

from .gc import GcResult, collect, sweep
from .push import _confirm


@dataclass(frozen=True)
class Withdrawal:
    target: str
    topic: str
    found: bool  # a retained manifest was there
    gc: GcResult

    def lines(self) -> list[str]:
        first = (
            f"withdrew the deployment of {self.target} ({self.topic})"
            if self.found
            else f"{self.target}: no deployment was retained on {self.topic}; nothing withdrawn"
        )
        return [first, self.gc.line()]


def withdraw(
    client: mqtt.Client,
    topics: Topics,
    target: str,
    *,
    timeout: float = 30.0,
) -> Withdrawal:
    inventory = collect(client, topics, timeout)
    topic = topics.deploy(target)
    found = topic in inventory.manifests
    if found:
        _confirm(
            client.publish(topic, b"", qos=1, retain=True), f"the clearing of {topic}", timeout
        )
    result = sweep(client, inventory, ignoring=frozenset({topic}), timeout=timeout)
    return Withdrawal(target, topic, found, result)
