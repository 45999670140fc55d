"""Home Assistant MQTT discovery: the device appears in Home Assistant by itself.

One retained device-based discovery message on ``{prefix}/device/{device}/config`` describes
every entity (sensors, a binary sensor per watched label, the snapshot image, the model's update
entity, buttons and the score threshold). Home Assistant reads the state from topics the agent
already keeps (the retained status and telemetry, the retained snapshot) and from a few of its
own under ``devices/{id}/ha/``. Presses come back on ``devices/{id}/ha/set/{name}``.

Home Assistant cannot sign a command, so ``[homeassistant] allow`` is the only guard on what a
press may do: a name not listed there gets no command topic and is ignored when pressed.

Discovery follows https://www.home-assistant.io/integrations/mqtt/#device-discovery-payload:
``dev`` and ``o`` (both required) at the root with the shared ``availability``; every entity
under ``cmps`` with its platform ``p``, a ``unique_id`` and a ``default_entity_id`` (the full
entity id, ``sensor.x``; ``object_id`` is deprecated and stops working in Home Assistant 2026.4).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.comms.link import MqttLink
from agent.config.control import HomeAssistantConfig
from agent.config.upstream import ResultsConfig
from agent.contract import Topics
from agent.inference.runtime import Inference, ModelSession
from agent.sources import Frame

log = logging.getLogger(__name__)

STATE_EVERY_S = 1.0  # the last label/score state: on change, at most this often
LABEL_ON_EVERY_S = 1.0  # a label's "ON": at most this often (its off_delay keeps it on between)
PRESS = "PRESS"  # what Home Assistant's MQTT button sends by default (payload_press)
# A press's name -> the command it becomes; ``threshold`` carries the number pressed.
COMMANDS = {"snapshot": "snapshot", "restart": "restart", "rollback": "rollback"}
_TOPIC_LEVEL_BAD = set("+#/\x00")


def slug(text: str) -> str:
    """``text`` as Home Assistant's entity ids want it: lower-case letters, digits, single
    underscores, none leading or trailing."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def label_level(label: str) -> str:
    """A label as one topic level: the label itself unless it cannot be one (then its slug)."""
    return label if label and not _TOPIC_LEVEL_BAD & set(label) else slug(label)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class HomeAssistant:
    """Publishes the discovery and the state Home Assistant shows; turns allowed presses into
    local commands (``run(cmd, args)``)."""

    def __init__(
        self,
        *,
        config: HomeAssistantConfig,
        device: str,
        topics: Topics,
        link: MqttLink,
        status_topic: str,
        run: Callable[[str, dict[str, Any]], None],
        results: Callable[[], ResultsConfig],
        model: Callable[[], dict[str, str] | None],
        offered: Callable[[], dict[str, str] | None],
    ):
        self._config, self._device, self._topics, self._link = config, device, topics, link
        self._status_topic, self._run, self._results = status_topic, run, results
        self._model, self._offered = model, offered
        self.discovery_topic = f"{config.prefix}/device/{device}/config"
        self._watched = {label: label_level(label) for label in config.labels}
        self._lock = threading.Lock()  # the paho and inference threads both publish state
        self._state: dict[str, Any] | None = None  # last published on ha/state
        self._next_state = 0.0
        self._last_on: dict[str, float] = {}
        self._serving: str | None = None  # the version last told to the update entity
        self._refused: set[str] = set()  # press names already logged as not allowed
        self._removed = False
        self._observe_failed = False

    # -- wiring -----------------------------------------------------------------------------

    def start(self) -> None:
        """Before ``link.start()``: what happens on every connect, and the subscriptions."""
        self._link.on_connected(self._on_connected)
        if not self._config.enabled:
            return  # nothing to hear: the device is being removed from Home Assistant
        self._link.subscribe(f"{self._config.prefix}/status", self._on_birth)
        # A press is an act, never a state: one retained by the broker must not run on connect.
        self._link.subscribe(self._topics.ha(self._device, "set/+"), self._on_press, live_only=True)

    def _on_connected(self) -> None:
        try:
            if self._config.enabled:
                self.announce()
            elif not self._removed:
                # An empty retained payload removes the device and clears the retained config.
                self._removed = self._link.publish_bytes(self.discovery_topic, b"", retain=True)
        except Exception:  # never into paho's network thread
            log.exception("Home Assistant discovery failed")

    def _on_birth(self, _topic: str, payload: bytes) -> None:
        # Home Assistant (re)started: it has forgotten what was discovered unless retained.
        if payload.strip() == b"online":
            self._on_connected()

    def announce(self) -> None:
        """Discovery, then the model's and the last label's state (state after the config:
        Home Assistant subscribes to a state topic only once the config is processed)."""
        payload = _dumps(self.discovery())
        if not self._link.publish_bytes(self.discovery_topic, payload, retain=True):
            log.warning(
                "Home Assistant discovery (%d bytes) not sent: link down or over the packet cap",
                len(payload),
            )
            return
        self._publish_model()
        with self._lock:
            state = self._state or self._state_of(None, None)
            self._state = state
        self._link.publish(self._topics.ha(self._device, "state"), _dumps(state), retain=True)

    # -- discovery --------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The device discovery payload (Home Assistant's documented schema)."""
        dev = self._device
        components: dict[str, dict[str, Any]] = {
            **self._sensors(),
            **self._label_sensors(),
            "snapshot_image": {
                "p": "image",
                "name": "Snapshot",
                "image_topic": self._topics.snapshot(dev),
                "content_type": "image/jpeg",
            },
            "model": {
                "p": "update",
                "name": "Model",
                "title": "Model",
                "state_topic": self._topics.ha(dev, "model"),  # JSON installed/latest_version
            },
            **self._controls(),
        }
        for key, component in components.items():
            component["unique_id"] = f"edgewise_{dev}_{key}"
            component["default_entity_id"] = f"{component['p']}.{slug(f'edgewise_{dev}_{key}')}"
        return {
            "dev": {
                "ids": [f"edgewise_{dev}"],
                "name": dev,
                "mf": "Edgewise",
                "mdl": "Edgewise agent",
                "sw": __version__,
            },
            "o": {"name": "edgewise-agent", "sw": __version__},
            "availability": [
                {
                    "topic": self._status_topic,
                    "value_template": "{{ value_json.state }}",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ],
            "qos": 1,
            "cmps": components,
        }

    def _sensors(self) -> dict[str, dict[str, Any]]:
        state = self._topics.ha(self._device, "state")
        telemetry = self._topics.telemetry(self._device)

        def figure(name: str, template: str, unit: str, precision: int) -> dict[str, Any]:
            return {
                "p": "sensor",
                "name": name,
                "state_topic": telemetry,
                "value_template": template,
                **({"unit_of_measurement": unit} if unit else {}),  # a count has none
                "state_class": "measurement",
                "suggested_display_precision": precision,
                "entity_category": "diagnostic",
            }

        return {
            "last_label": {
                "p": "sensor",
                "name": "Last label",
                "state_topic": state,
                "value_template": "{{ value_json.label }}",
                "icon": "mdi:tag",
            },
            "score": {
                "p": "sensor",
                "name": "Score",
                "state_topic": state,
                "value_template": "{{ value_json.score }}",
                "state_class": "measurement",
                "suggested_display_precision": 2,
            },
            "fps": figure("FPS", "{{ value_json.frames_per_second }}", "fps", 1),
            # Telemetry says seconds, people read ms; null before the first frame: "None" makes
            # the sensor unknown.
            "latency_p99": figure(
                "Latency p99",
                "{{ (value_json.latency_p99_seconds * 1000) | round(3) "
                "if value_json.latency_p99_seconds is not none else None }}",
                "ms",
                1,
            ),
            "results_queued": figure("Results queued", "{{ value_json.results_queued }}", "", 0),
        }

    def _label_sensors(self) -> dict[str, dict[str, Any]]:
        # Home Assistant's binary_sensor takes off_delay in whole seconds (coerced to int).
        off_delay = max(1, math.ceil(self._config.off_delay_s))
        found: dict[str, dict[str, Any]] = {}
        for label, level in self._watched.items():
            key = f"label_{slug(label)}"
            while key in found:  # two labels with one slug ("Cat", "cat")
                key += "_"
            found[key] = {
                "p": "binary_sensor",
                "name": label,
                "state_topic": self._topics.ha(self._device, f"label/{level}"),
                "payload_on": "ON",
                "payload_off": "OFF",
                "off_delay": off_delay,
            }
        return found

    def _controls(self) -> dict[str, dict[str, Any]]:
        """Buttons and the threshold, only for names in ``allow``. Home Assistant's button and
        number both require a command_topic, and Home Assistant cannot sign: a control it may
        not use is left out entirely rather than shown and refused."""
        allow, dev = set(self._config.allow), self._device
        buttons = {"restart": "restart", "snapshot": None, "rollback": None}
        found: dict[str, dict[str, Any]] = {}
        for name, device_class in buttons.items():
            if name in allow:
                found[f"{name}_button"] = {
                    "p": "button",
                    "name": name.capitalize(),
                    "command_topic": self._topics.ha(dev, f"set/{name}"),
                    "payload_press": PRESS,
                    "entity_category": "config",
                    **({"device_class": device_class} if device_class else {}),
                }
        if "threshold" in allow:
            found["threshold"] = {
                "p": "number",
                "name": "Score threshold",
                "command_topic": self._topics.ha(dev, "set/threshold"),
                "state_topic": self._topics.ha(dev, "state"),
                "value_template": "{{ value_json.min_score }}",
                "min": 0,
                "max": 1,
                "step": 0.01,
                "mode": "box",
                "entity_category": "config",
            }
        return found

    # -- state ------------------------------------------------------------------------------

    def _publish_model(self) -> None:
        model, offered = self._model(), self._offered()
        installed = model["version"] if model else None
        self._serving = installed
        # No offer: the installed version is the latest (Home Assistant shows "up to date").
        latest = offered["version"] if offered else installed
        payload = {"installed_version": installed, "latest_version": latest}
        self._link.publish(self._topics.ha(self._device, "model"), _dumps(payload), retain=True)

    def _state_of(self, label: str | None, score: float | None) -> dict[str, Any]:
        return {"label": label, "score": score, "min_score": self._results().min_score}

    def observe(self, frame: Frame, session: ModelSession, inference: Inference) -> None:
        """An inference-thread observer: only cheap work, and publishing (non-blocking)."""
        if not self._config.enabled:
            return
        try:
            self._observe(session, inference)
        except Exception:  # Home Assistant's view must never stop inference
            if not self._observe_failed:  # once: this runs for every frame
                self._observe_failed = True
                log.exception("Home Assistant state update failed (not logged again)")

    def _label_on(self, label: str, score: float, now: float) -> bool:
        """Whether a watched label's sensor gets an "ON" now (at most one a second each)."""
        if label not in self._watched or score < self._config.min_score:
            return False
        if now - self._last_on.get(label, -math.inf) < LABEL_ON_EVERY_S:
            return False
        self._last_on[label] = now
        return True

    def _observe(self, session: ModelSession, inference: Inference) -> None:
        now, top = time.monotonic(), inference.top
        if top is not None and self._label_on(top.label, top.score, now):
            level = self._watched[top.label]
            self._link.publish(self._topics.ha(self._device, f"label/{level}"), b"ON", qos=0)
        if session.manifest.version != self._serving and self._link.connected.is_set():
            self._publish_model()  # a new model serves: the update entity follows
        if now < self._next_state:
            return
        label = top.label if top is not None else None
        score = round(top.score, 2) if top is not None else None
        state = self._state_of(label, score)
        with self._lock:
            if state == self._state:
                return
            self._state, self._next_state = state, now + STATE_EVERY_S
        self._link.publish(self._topics.ha(self._device, "state"), _dumps(state), retain=True)

    # -- presses ----------------------------------------------------------------------------

    def _on_press(self, topic: str, payload: bytes) -> None:
        """A press from Home Assistant (paho's thread). Home Assistant cannot sign, so the
        allow list is the only guard here; nothing in a payload may raise into paho."""
        try:
            self._press(topic.rsplit("/", 1)[-1], payload)
        except Exception:
            log.exception("Home Assistant press on %s failed", topic)

    def _press(self, name: str, payload: bytes) -> None:
        if name not in self._config.allow:
            if name not in self._refused:  # once: a busy dashboard must not flood the log
                self._refused.add(name)
                log.warning(
                    "Home Assistant pressed %r, which [homeassistant] allow does not list; "
                    "ignored (and not logged again)",
                    name[:64],
                )
            return
        if name == "threshold":
            value = self._threshold(payload)
            if value is not None:
                self._run("results", {"min_score": value})
            return
        if payload.strip() != PRESS.encode():
            log.warning(
                "Home Assistant pressed %r with %r, not %r; ignored", name, payload[:32], PRESS
            )
            return
        self._run(COMMANDS[name], {})

    def _threshold(self, payload: bytes) -> float | None:
        try:
            value = float(payload.decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            log.warning("Home Assistant sent a threshold that is not a number: %r", payload[:32])
            return None
        if not 0.0 <= value <= 1.0:  # also refuses nan and inf
            log.warning("Home Assistant sent a threshold outside 0..1: %r", value)
            return None
        return value
