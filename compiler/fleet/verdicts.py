"""``edgewise push --wait``: what each targeted device said about the package it was sent.

The watch subscribes before the package goes out, so no answer can slip past. It reads:

- the retained ``devices/{id}/status``: which devices ever connected (the birth is retained and
  so is the last will), whether they are online, what they serve. It does not say which groups
  a device is in, so for ``group:NAME`` the devices that answer are the ones reported;
- ``devices/{id}/events``: the deployment steps for this name and version (``active``,
  ``rejected`` with its reason, ``rolled_back``), or a rejection of the manifest itself (a bad
  signature or target) that names this deploy topic because the device could not read the name.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from agent.contract import Topics

from .mqtt import Subscriber

ACTIVE, REJECTED, ROLLED_BACK, NO_ANSWER = "active", "rejected", "rolled_back", "no answer"
# A shadow push's device installed and shadows it; "passed": after "active", probation passed.
STAGED, PASSED = "staged", "passed"
FINAL = (ACTIVE, REJECTED, ROLLED_BACK, STAGED)
# Mosquitto queues a subscription's retained messages right behind its SUBACK; a broker that
# sends them later still gets this long before a device is called unknown.
RETAINED_GRACE_S = 0.5


def _flat(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Verdict:
    device: str
    outcome: str  # one of FINAL, NO_ANSWER, or a step still under way ("downloading", ...)
    detail: str = ""

    @property
    def final(self) -> bool:
        return self.outcome in FINAL

    def line(self) -> str:
        joint = " " if self.outcome == NO_ANSWER else ": "  # "no answer within 3 s (...)"
        tail = joint + self.detail if self.detail else ""
        return _flat(f"{self.device}: {self.outcome}{tail}")


def judge(
    device: str, event: dict[str, Any], model: dict[str, str], deploy_topic: str
) -> Verdict | None:
    """The verdict (or step) an agent's deployment event gives for ``model``; None if the event
    is about something else."""
    state, reason = str(event.get("state")), str(event.get("reason", ""))
    if event.get("model") == model:
        if state == ROLLED_BACK:
            return Verdict(device, state, f"{reason} (restored {event.get('restored')})")
        if state == REJECTED:
            return Verdict(device, state, reason)
        if state == "downloading":
            return Verdict(device, state, f"{event.get('percent', 0)}%")
        if state == PASSED:  # after "active": its probation window passed
            return Verdict(device, ACTIVE)  # the same line whichever of the two came last
        return Verdict(device, state)
    # A manifest that fails its signature or target check has no name the device can trust,
    # so the agent names the topic it came on instead.
    prefix = f"{deploy_topic}: "
    if event.get("model") is None and state == REJECTED and reason.startswith(prefix):
        return Verdict(device, state, reason[len(prefix) :])
    return None


class DeployWatch:
    """Statuses and deployment answers of the target's devices, from before the push on."""

    def __init__(self, client: mqtt.Client, topics: Topics, target: str, name: str, version: str):
        kind, _, ident = target.partition(":")
        self.device = ident if kind == "device" else None
        self.group = ident if kind == "group" else None
        self._topics, self._deploy_topic = topics, topics.deploy(target)
        self._model = {"name": name, "version": version}
        self._status_filter = topics.status(ident) if self.device else topics.all_devices("status")
        self._events_filter = topics.events(ident) if self.device else topics.all_devices("events")
        self._cond = threading.Condition()
        self._status: dict[str, dict[str, Any]] = {}
        self._answers: dict[str, Verdict] = {}  # the latest word of each device on this package
        self._expected: set[str] | None = None  # None: not knowable (a group)
        client.message_callback_add(self._status_filter, self._on_status)
        client.message_callback_add(self._events_filter, self._on_event)

    def start(self, subscriber: Subscriber) -> None:
        """Subscribe, and learn which devices exist from their retained statuses."""
        # Two SUBSCRIBE packets, answered in order: the second SUBACK comes after the retained
        # statuses the first one released. QoS 0 for statuses, so no inflight window holds
        # some of them back behind that SUBACK when the fleet is large.
        subscriber.subscribe([(self._status_filter, 0)])
        subscriber.subscribe([(self._events_filter, 1)])
        with self._cond:
            if self.device:
                self._cond.wait_for(lambda: self.device in self._status, RETAINED_GRACE_S)
                self._expected = {self.device}
            elif self.group is None:
                self._expected = set(self._status)
            for device in self._expected or ():
                status = self._status.get(device, {})
                if status.get("state") == "online" and status.get("model") == self._model:
                    # The agent says nothing when told to deploy what it already serves.
                    self._answers[device] = Verdict(device, ACTIVE, "already serving it")

    def has_connected(self, device: str) -> bool:
        with self._cond:
            return device in self._status

    def wait(self, seconds: float) -> list[Verdict]:
        """Block until every targeted device gave a verdict or ``seconds`` passed; one verdict
        per device (NO_ANSWER for the silent ones), sorted by device."""
        with self._cond:
            self._cond.wait_for(self._settled, seconds)
            return [self._verdict(device, seconds) for device in sorted(self._waiting_on())]

    def _waiting_on(self) -> set[str]:
        expected = self._expected if self._expected is not None else set()
        return expected | set(self._answers)

    def _settled(self) -> bool:
        # For a group nobody knows who is in it: done early only once every device that ever
        # connected has given a verdict, since any of them might still answer.
        waiting_on = self._waiting_on() | (set(self._status) if self._expected is None else set())
        return bool(waiting_on) and all(
            device in self._answers and self._answers[device].final for device in waiting_on
        )

    def _verdict(self, device: str, seconds: float) -> Verdict:
        answer = self._answers.get(device)
        if answer is not None and answer.final:
            return answer
        return Verdict(device, NO_ANSWER, f"within {seconds:g} s ({self._silence(device, answer)})")

    def _silence(self, device: str, step: Verdict | None) -> str:
        """What is known of a device that gave no verdict, to point at the next thing to check."""
        if step is not None:
            return _flat(f"its last step: {step.outcome} {step.detail}")
        status = self._status.get(device)
        if status is None:
            return "it has never connected to this broker"
        if status.get("state") != "online":
            return f"its last status: {status.get('state')}"
        last = status.get("deployment") or {}
        if last.get("model") == self._model and last.get("state") in (REJECTED, ROLLED_BACK):
            return (
                f"it refused this package before ({last.get('reason')}) and does not retry a "
                "quarantined package; push a new version"
            )
        serving = status.get("model") or {}
        return f"online, serving {serving.get('name')} {serving.get('version')}"

    def _on_status(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = self._topics.device_of(msg.topic)
        try:
            status = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        with self._cond:
            if isinstance(status, dict):
                self._status[device] = status
            elif not msg.payload:  # a cleared retained status: the device was removed
                self._status.pop(device, None)
            self._cond.notify_all()

    def _on_event(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = self._topics.device_of(msg.topic)
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") != "deployment":
            return
        verdict = judge(device, event, self._model, self._deploy_topic)
        if verdict is None:
            return
        with self._cond:
            # A later word wins: a rollback during probation overrides the "active" before it.
            self._answers[device] = verdict
            self._cond.notify_all()
