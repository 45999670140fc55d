"""What a device says about itself: the retained status (birth, last will, goodbye) and events.

The status carries what serves, the source's state and the last deployment step; an event is
published once, and a deployment event also updates the status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.comms.link import MqttLink
from agent.contract import Topics
from agent.inference.pipeline import ModelSlot
from agent.notify import SystemdNotifier


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class StatusBoard:
    """Holds what the status says and publishes events; ``link`` is attached once it exists
    (the link needs the status for its last will)."""

    def __init__(
        self,
        *,
        device: str,
        boot_id: str,
        groups: tuple[str, ...] = (),
        topics: Topics,
        source_uri: str,
        models: ModelSlot,
        notifier: SystemdNotifier,
    ):
        self._device, self._boot_id, self._topics = device, boot_id, topics
        self._groups = groups
        self._source_uri, self._models, self._notifier = source_uri, models, notifier
        self._started_at = time.time()
        self._source: dict[str, Any] | None = None
        self._source_failed = False
        self._deployment: dict[str, Any] | None = None
        self.link: MqttLink | None = None
        self._observers: list[Callable[[dict[str, Any]], None]] = []

    @property
    def topic(self) -> str:
        return self._topics.status(self._device)

    def model(self) -> dict[str, str] | None:
        session = self._models.current
        if session is None:
            return None
        return {"name": session.manifest.name, "version": session.manifest.version}

    def backend(self) -> dict[str, Any] | None:
        """What runs the serving model, and every backend's figures from the probe that chose
        it (None for a package installed before backends were chosen)."""
        session = self._models.current
        if session is None:
            return None
        return {"name": session.backend, "measured": session.measured}

    def payload(self, state: str) -> bytes:
        return encode(
            {
                "state": state,
                "device": self._device,
                "groups": list(self._groups),  # a rollout to group:G finds its devices here
                "agent_version": __version__,
                "boot_id": self._boot_id,
                "model": self.model(),
                "backend": self.backend(),
                "source": {"uri": self._source_uri, **(self._source or {})},
                "uptime_s": round(time.time() - self._started_at, 1),
                "deployment": self._deployment,
                # What the broker offers (CONNACK), as the link read it: retain, shared
                # subscriptions, QoS, packet size, receive maximum, protocol.
                "broker": self.link.capabilities.as_dict() if self.link is not None else None,
            }
        )

    def announcement(self) -> dict[str, object]:
        """What every telemetry message repeats from the status (``ANNOUNCED``): where a broker
        does not deliver the retained status to a wildcard subscription (RabbitMQ), the live
        telemetry still tells the fleet view the device's state, model, source and deployment."""
        return {
            "state": "online",  # telemetry goes out only while connected
            "groups": list(self._groups),
            "model": self.model(),
            "backend": self.backend(),
            "source_state": (self._source or {}).get("state"),
            "deployment": self._deployment,
        }

    def serving(self) -> str:
        """One line for systemd's STATUS and the logs."""
        model = self.model()
        if model is None:
            return "waiting for a deployment"
        return f"serving {model['name']} {model['version']} on {self._source_uri}"

    def event(self, event: dict[str, Any]) -> None:
        """Publish an event; a deployment step also becomes part of the retained status."""
        event = {"device": self._device, "boot_id": self._boot_id, "at": time.time(), **event}
        for observer in self._observers:
            observer(event)
        if self.link is None:
            return
        self.link.publish(self._topics.events(self._device), encode(event), qos=1)
        if event.get("type") == "deployment":
            self._deployment = {k: v for k, v in event.items() if k not in ("device", "boot_id")}
            self.link.announce()
            self._notifier.status(self.serving())

    def observe(self, observer: Callable[[dict[str, Any]], None]) -> None:
        """Hand every event to ``observer`` too (the daemon counts deployment outcomes so)."""
        self._observers.append(observer)

    def source_state(self, state: str, detail: str) -> None:
        """The capture thread's news: a failure or an end is an event; so is the first open
        after one. Every change is in the status."""
        self._source = {"state": state, "detail": detail, "at": round(time.time(), 3)}
        if state != "open" or self._source_failed:
            self.event({"type": "source", **self._source})
        self._source_failed = state in ("failed", "ended")
        if self.link is not None:
            self.link.announce()
