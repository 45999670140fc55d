"""Home Assistant discovery on a real Mosquitto through a real MqttLink: the payload checked
against Home Assistant's documented schema (integrations/mqtt "Device discovery payload", the
platform pages, and ``default_entity_id`` replacing the deprecated ``object_id``), presses
gated by ``allow``, removal with an empty retained config, a re-announce on HA's birth."""

from __future__ import annotations

import functools
import json
import logging
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from agent.comms.link import MqttLink
from agent.config import MqttConfig
from agent.config.control import HomeAssistantConfig
from agent.config.upstream import ResultsConfig
from agent.contract import Topics
from agent.control.homeassistant import HomeAssistant
from agent.inference.postprocess import Prediction
from agent.inference.runtime import Inference

DEVICE = "cam-7"
TOPICS = Topics()
STATUS = TOPICS.status(DEVICE)
Address = tuple[str, int]

PLATFORMS = {"sensor", "binary_sensor", "button", "number", "image", "update"}
ROOT_KEYS = {  # device discovery: the mandatory mappings and the shared options, no others
    "dev", "device", "o", "origin", "cmps", "components", "availability", "availability_mode",
    "availability_topic", "availability_template", "payload_available", "payload_not_available",
    "command_topic", "state_topic", "qos", "encoding", "~",
}  # fmt: skip
REQUIRED = {  # per platform, as the platform docs mark them required (image: checked below)
    "sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "button": {"command_topic"},
    "number": {"command_topic"}, "image": set(), "update": set(),
}  # fmt: skip
SUBSCRIBED = ("state_topic", "image_topic", "latest_version_topic", "json_attributes_topic")
# Home Assistant's valid_entity_id: domain.object, lower-case, no leading/trailing/double "_".
ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
DISCOVERY_TOPIC = re.compile(r"^[A-Za-z0-9_-]+/device/[A-Za-z0-9_-]+/config$")


def topic_problem(topic: object, publish: bool) -> str | None:
    """Why ``topic`` is no valid MQTT topic (``publish``) or filter, or None."""
    if not isinstance(topic, str) or not topic or "\0" in topic or len(topic.encode()) > 65535:
        return f"not an MQTT topic: {topic!r}"
    levels = topic.split("/")
    wild = [lv for lv in levels if "+" in lv or "#" in lv]
    if (publish and wild) or {*wild} - {"+", "#"} or "#" in levels[:-1]:
        return f"misplaced wildcard in {topic!r}"
    return None


def schema_problems(topic: str, payload: dict[str, Any]) -> list[str]:
    """What Home Assistant would refuse or warn about in this device discovery message."""
    found = [] if DISCOVERY_TOPIC.match(topic) else [f"discovery topic {topic!r}"]
    found += [f"unknown root option {k!r}" for k in set(payload) - ROOT_KEYS]
    dev, origin = payload.get("dev", payload.get("device")), payload.get("o", payload.get("origin"))
    if not isinstance(dev, dict) or not (dev.get("ids") or dev.get("cns")) or not dev.get("name"):
        found.append("dev needs ids (or cns) and name")
    if not isinstance(origin, dict) or not origin.get("name"):
        found.append("o needs a name")
    found += _availability_problems(payload)
    components = payload.get("cmps", payload.get("components"))
    if not isinstance(components, dict) or not components:
        return [*found, "cmps must map component ids to configs"]
    unique_ids = [c.get("unique_id") for c in components.values() if isinstance(c, dict)]
    if len(set(unique_ids)) != len(unique_ids):
        found.append(f"unique_id not unique: {sorted(map(str, unique_ids))}")
    for key, component in components.items():
        found += [f"{key}: {p}" for p in _component_problems(component)]
    return found


def _availability_problems(payload: dict[str, Any]) -> list[str]:
    availability = payload.get("availability", [])
    if not isinstance(availability, list) or (availability and "availability_topic" in payload):
        return ["availability must be a list, not used with availability_topic"]
    found = [f"availability: {topic_problem(e.get('topic'), False)}" for e in availability]
    keys = {"topic", "payload_available", "payload_not_available", "value_template"}
    unknown = [f"availability: unknown {set(e) - keys}" for e in availability if set(e) - keys]
    return [f for f in found if not f.endswith("None")] + unknown


def _component_problems(component: Any) -> list[str]:
    if not isinstance(component, dict) or component.get("p") not in PLATFORMS:
        return [f"platform p missing or unsupported: {component!r}"]
    platform = component["p"]
    if set(component) == {"p"}:
        return ["only p: that removes the component"]
    found = [f"{k} missing" for k in REQUIRED[platform] - set(component)]
    if "object_id" in component or "obj_id" in component:
        found.append("object_id is deprecated: use default_entity_id")
    entity_id = component.get("default_entity_id")
    if not isinstance(entity_id, str) or not ENTITY_ID.match(entity_id):
        found.append(f"default_entity_id {entity_id!r} is not an entity id")
    elif not entity_id.startswith(f"{platform}."):
        found.append(f"default_entity_id {entity_id!r} is not in domain {platform}")
    if not isinstance(component.get("unique_id"), str):
        found.append("unique_id missing (required for entities in device discovery)")
    for key in (*SUBSCRIBED, "command_topic"):
        problem = key in component and topic_problem(component[key], key == "command_topic")
        found += [f"{key}: {problem}"] if problem else []
    return found + _platform_problems(platform, component)


def _platform_problems(platform: str, c: dict[str, Any]) -> list[str]:
    found = []
    delay = c.get("off_delay", 0)
    if platform == "binary_sensor" and (not isinstance(delay, int) or delay < 0):
        found.append(f"off_delay {delay!r} is not whole seconds (Home Assistant makes it int)")
    if platform == "number":
        low, high, step = c.get("min", 1), c.get("max", 100), c.get("step", 1)
        if not low < high or not step >= 0.001:
            found.append(f"number range {low}..{high} step {step}")
    if platform == "image" and ("image_topic" in c) == ("url_topic" in c):
        found.append("image needs exactly one of image_topic and url_topic")
    return found


@pytest.fixture
def broker() -> Iterator[Address]:
    """A private mosquitto (the shared fixture needs the compiler, which these tests lack)."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        pytest.skip("mosquitto is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    # Without a config file mosquitto 2 listens on loopback only and lets anyone in.
    proc = subprocess.Popen([binary, "-p", str(port)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)):  # a port has no event: poll it
        assert time.monotonic() < deadline and proc.poll() is None, "mosquitto did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    proc.terminate()
    proc.wait(10)


class Observer:
    """A plain client that records every message (topic, payload, retain flag)."""

    def __init__(self, address: Address, topic_filter: str = "#"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message, subscribed = self._on_message, threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(*address)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.changed.notify_all()

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        return [(p, r) for t, p, r in list(self.messages) if t == topic]

    def wait(self, topic: str, count: int = 1) -> list[tuple[bytes, bool]]:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.on(topic)) >= count, 10)
            assert ok, f"{count} message(s) on {topic} never came: {self.messages[-5:]}"
            return self.on(topic)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def observer(broker: Address) -> Iterator[Observer]:
    yield (watching := Observer(broker))
    watching.close()


class Rig:
    """A HomeAssistant on its own MqttLink, recording what it asks to run."""

    def __init__(self, address: Address, made: list[Rig], **config: Any):
        made.append(self)
        self.calls: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.offered: dict[str, str] | None = {"name": "digits", "version": "1.1.0"}
        self.link = MqttLink(
            MqttConfig(host=address[0], port=address[1]), f"edgewise-agent-{DEVICE}",
            will=(STATUS, b'{"state":"offline"}'), birth=lambda: (STATUS, b'{"state":"online"}'),
        )  # fmt: skip
        self.ha = HomeAssistant(
            config=HomeAssistantConfig(**config), device=DEVICE, topics=TOPICS, link=self.link,
            status_topic=STATUS, run=lambda cmd, args: self.calls.put((cmd, args)),
            results=ResultsConfig, model=lambda: {"name": "digits", "version": "1.0.0"},
            offered=lambda: self.offered,
        )  # fmt: skip
        self.ha.start()
        self.link.start()
        assert self.link.connected.wait(10)


@pytest.fixture
def rigs(broker: Address) -> Iterator[Rigs]:
    made: list[Rig] = []  # each its own link, stopped after the test
    yield functools.partial(Rig, broker, made)
    for rig in made:
        rig.link.stop()


ALL: tuple[Any, ...] = ("snapshot", "restart", "rollback", "threshold")
Rigs = Callable[..., Rig]


def retained(address: Address, topic: str) -> bytes | None:
    """What the broker retains on ``topic``: it comes before a marker sent after subscribing."""
    marker, fresh = f"test/marker/{time.monotonic_ns()}", Observer(address, topic)
    fresh.client.subscribe(marker, qos=1)
    fresh.publish(marker, b"m")
    fresh.wait(marker)
    fresh.close()
    kept = [p for p, was_retained in fresh.on(topic) if was_retained]
    return kept[-1] if kept else None


def discovery_of(observer: Observer, rig: Rig, count: int = 1) -> dict[str, Any]:
    payload, _ = observer.wait(rig.ha.discovery_topic, count)[count - 1]
    return json.loads(payload)


def test_discovery_matches_ha_schema(broker: Address, observer: Observer, rigs: Rigs) -> None:
    rig = rigs(enabled=True, allow=ALL, labels=("person", "Red Car"), off_delay_s=2.5)
    payload = discovery_of(observer, rig)
    assert schema_problems(rig.ha.discovery_topic, payload) == []
    assert rig.ha.discovery_topic == f"homeassistant/device/{DEVICE}/config"
    assert json.loads(retained(broker, rig.ha.discovery_topic) or b"null") == payload
    cmps = payload["cmps"]
    assert {c["p"] for c in cmps.values()} == PLATFORMS
    assert cmps["label_red_car"]["state_topic"] == TOPICS.ha(DEVICE, "label/Red Car")
    assert cmps["label_person"]["off_delay"] == 3  # whole seconds, never shorter than asked
    image = cmps["snapshot_image"]
    assert (image["image_topic"], image["content_type"]) == (TOPICS.snapshot(DEVICE), "image/jpeg")
    assert cmps["latency_p99"]["state_topic"] == TOPICS.telemetry(DEVICE)
    assert [cmps["threshold"][k] for k in ("min", "max", "step")] == [0, 1, 0.01]
    assert payload["availability"] == [{
        "topic": STATUS, "value_template": "{{ value_json.state }}",
        "payload_available": "online", "payload_not_available": "offline",
    }]  # fmt: skip
    model = {"installed_version": "1.0.0", "latest_version": "1.1.0"}
    assert json.loads(observer.wait(TOPICS.ha(DEVICE, "model"))[0][0]) == model
    assert json.loads(retained(broker, TOPICS.ha(DEVICE, "state")) or b"{}")["min_score"] == 0.5


def test_the_validator_catches_what_home_assistant_refuses() -> None:
    button = dict(p="button", command_topic="a/b", unique_id="u", default_entity_id="button.a")
    good, topic = {"dev": {"ids": ["x"], "name": "x"}, "o": {"name": "t"}}, "ha/device/x/config"
    assert schema_problems(topic, {**good, "cmps": {"a": button}}) == []
    for change, expected in [
        ({"command_topic": None}, "command_topic missing"), ({"command_topic": "a/+"}, "wildcard"),
        ({"object_id": "a"}, "deprecated"), ({"default_entity_id": "a"}, "not an entity id"),
        ({"default_entity_id": "sensor.a"}, "not in domain"), ({"p": "camera"}, "unsupported"),
    ]:  # fmt: skip
        broken = {k: v for k, v in {**button, **change}.items() if v is not None}  # type: ignore[dict-item]
        problems = schema_problems(topic, {**good, "cmps": {"a": broken}})
        assert any(expected in p for p in problems), (change, problems)
    twice = {"a": button, "b": {**button, "default_entity_id": "button.b"}}
    assert any("unique" in p for p in schema_problems(topic, {**good, "cmps": twice}))
    assert schema_problems(topic, {"cmps": {"a": button}})  # no dev, no o


def test_templates_read_the_agents_own_payloads() -> None:
    """The value templates, rendered as Home Assistant does (Jinja), on the agent's payloads."""
    jinja2 = pytest.importorskip("jinja2")
    from agent.upstream.telemetry import telemetry_message

    cmps = HomeAssistant(
        config=HomeAssistantConfig(enabled=True, allow=ALL), device=DEVICE, topics=TOPICS,
        link=None, status_topic=STATUS, run=lambda *_: None,  # type: ignore[arg-type]
        results=ResultsConfig, model=lambda: None, offered=lambda: None,
    ).discovery()["cmps"]  # fmt: skip

    def render(key: str, payload: dict[str, Any]) -> str:
        template = cmps[key]["value_template"] if key in cmps else key
        return jinja2.Environment().from_string(template).render(value_json=payload)

    assert render("{{ value_json.state }}", {"state": "offline", "model": None}) == "offline"
    sample = telemetry_message(
        device=DEVICE, boot_id="b", interval_s=10.0, frames=120, frames_before=20,
        stages={"total": {"p50": 3.0, "p99": 9.5}}, dropped_frames=0, results_queued=7,
        results_dropped=0, process={}, model=None,
    )  # fmt: skip
    assert (render("fps", sample), render("latency_p99", sample)) == ("10.0", "9.5")
    assert render("results_queued", sample) == "7"
    idle = {**sample, "latency_p99_seconds": None}
    assert render("latency_p99", idle) == "None"  # "unknown" in HA
    state = {"label": "7", "score": 0.93, "min_score": 0.4}
    assert (render("last_label", state), render("threshold", state)) == ("7", "0.4")


def test_presses_run_only_what_allow_lists(
    observer: Observer, rigs: Rigs, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rigs(enabled=True, allow=("snapshot", "threshold"))
    cmps = discovery_of(observer, rig)["cmps"]
    commanding = {key: c["command_topic"] for key, c in cmps.items() if "command_topic" in c}
    assert commanding == {  # HA may not press the others: they are left out
        "snapshot_button": TOPICS.ha(DEVICE, "set/snapshot"),
        "threshold": TOPICS.ha(DEVICE, "set/threshold"),
    }
    caplog.set_level(logging.WARNING, logger="agent.control.homeassistant")
    for name, payload in [
        ("restart", b"PRESS"), ("restart", b"PRESS"), ("rollback", b"PRESS"),
        ("snapshot", b"PRESS"), ("snapshot", b"nonsense"),
        ("threshold", b"0.3"), ("threshold", b"abc"), ("threshold", b"nan"),
        ("threshold", b"1.5"), ("threshold", b"\xff\xfe"), ("threshold", b""),
        ("snapshot", b"PRESS"),  # the last: once it ran, every press before was handled
    ]:  # fmt: skip
        observer.publish(TOPICS.ha(DEVICE, f"set/{name}"), payload)
    calls = [rig.calls.get(timeout=10) for _ in range(3)]
    assert calls == [("snapshot", {}), ("results", {"min_score": 0.3}), ("snapshot", {})]
    refusals = [r.getMessage() for r in caplog.records if "does not list" in r.getMessage()]
    assert len(refusals) == 2 and "'restart'" in refusals[0] and "'rollback'" in refusals[1]
    bad_numbers = [r for r in caplog.records if "threshold" in r.getMessage()]
    assert len(bad_numbers) == 5, [r.getMessage() for r in bad_numbers]
    assert rig.link.connected.is_set()  # nothing raised into paho's thread


def test_birth_of_home_assistant_republishes(observer: Observer, rigs: Rigs) -> None:
    rig = rigs(enabled=True, allow=ALL)
    first = discovery_of(observer, rig)
    rig.offered = {"name": "digits", "version": "2.0.0"}
    observer.publish("homeassistant/status", b"offline")
    observer.publish("homeassistant/status", b"online")
    assert discovery_of(observer, rig, count=2) == first
    model = [json.loads(p) for p, _ in observer.wait(TOPICS.ha(DEVICE, "model"), 2)]
    assert model[-1] == {"installed_version": "1.0.0", "latest_version": "2.0.0"}
    assert len(observer.on(rig.ha.discovery_topic)) == 2  # "offline" announced nothing


def test_disabled_removes_the_device(broker: Address, observer: Observer, rigs: Rigs) -> None:
    enabled = rigs(enabled=True, allow=ALL)
    discovery_of(observer, enabled)
    enabled.link.stop()
    assert retained(broker, enabled.ha.discovery_topic) is not None
    disabled = rigs(enabled=False, allow=ALL)
    payload, _ = observer.wait(disabled.ha.discovery_topic, 2)[1]
    assert payload == b""
    assert retained(broker, disabled.ha.discovery_topic) is None
    assert disabled.link._filters == {}  # subscribes nothing: no presses, no births
    before = len(observer.messages)
    disabled.ha.observe(None, SESSION, _inference("person"))  # type: ignore[arg-type]
    marker = TOPICS.ha(DEVICE, "test-marker")
    disabled.link.publish(marker, b"m", qos=1)
    observer.wait(marker)
    assert [t for t, _, _ in observer.messages[before:]] == [marker]


def _inference(label: str | None, score: float = 0.9) -> Inference:
    predictions = [Prediction(label, score)] if label is not None else []
    return Inference(predictions, 0.1, 1.0, 0.1)


SESSION = SimpleNamespace(manifest=SimpleNamespace(name="digits", version="1.0.0"))


def test_observe_turns_labels_on_and_keeps_the_state(observer: Observer, rigs: Rigs) -> None:
    rig = rigs(enabled=True, labels=("person",), min_score=0.6)
    discovery_of(observer, rig)
    state_topic, person = TOPICS.ha(DEVICE, "state"), TOPICS.ha(DEVICE, "label/person")
    observer.wait(state_topic)  # the state announced on connect
    for inference in [_inference("person", 0.5), _inference("person", 0.9),
                      _inference("person", 0.95), _inference("dog", 0.99)]:  # fmt: skip
        rig.ha.observe(None, SESSION, inference)  # type: ignore[arg-type]
    assert observer.wait(person) == [(b"ON", False)]  # 0.5 is under min_score; one a second
    state = json.loads(observer.wait(state_topic, 2)[1][0])
    assert state == {"label": "person", "score": 0.5, "min_score": 0.5}
    marker = TOPICS.ha(DEVICE, "test-marker")  # after all the above on the agent's connection
    rig.link.publish(marker, b"m", qos=1)
    observer.wait(marker)
    assert len(observer.on(state_topic)) == 2  # later changes wait for the next second
    assert len(observer.on(person)) == 1
    assert not [m for m in observer.messages if m[0].endswith("label/dog")]
    newer = SimpleNamespace(manifest=SimpleNamespace(name="digits", version="1.1.0"))
    rig.ha.observe(None, newer, _inference(None))  # type: ignore[arg-type]
    assert len(observer.wait(TOPICS.ha(DEVICE, "model"), 2)) == 2  # a new model: told at once
