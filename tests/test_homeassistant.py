"""Home Assistant on the real agent over a real Mosquitto: the device's discovery appears
retained, comes again after Home Assistant's birth, an allowed press takes a snapshot (a reply
and a retained JPEG), a press not allowed does nothing while the agent serves on, and the agent
started again with ``enabled = false`` removes the device."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from device_harness import DEPLOY, DEVICE, TOPICS, Device, install, start_device
from helpers import AgentProcess

from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect

DISCOVERY = f"homeassistant/device/{DEVICE}/config"
HA_SECTION = '\n[homeassistant]\nenabled = true\nallow = ["snapshot"]\nlabels = ["1", "7"]\n'


class HomeAssistantSide:
    """What Home Assistant does on the broker: reads discovery and state, presses buttons."""

    def __init__(self, port: int, filters: list[str]):
        self._topics: dict[str, queue.Queue[tuple[bytes, bool]]] = {}
        self._lock = threading.Lock()
        self.client = connect(BrokerAddress("127.0.0.1", port), f"ha-{uuid.uuid4().hex[:6]}")
        self.client.on_message = lambda _c, _u, m: self.on(m.topic).put(
            (bytes(m.payload), bool(m.retain))
        )
        Subscriber(self.client).subscribe([(f, 1) for f in filters])

    def on(self, topic: str) -> queue.Queue[tuple[bytes, bool]]:
        """What came on ``topic``, in order (one queue a topic: none passes over another's)."""
        with self._lock:
            return self._topics.setdefault(topic, queue.Queue())

    def next_on(self, topic: str, timeout: float = 20) -> tuple[bytes, bool]:
        try:
            return self.on(topic).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing on {topic} within {timeout} s") from None

    def reply(self, timeout: float = 20) -> dict[str, Any]:
        """The next final reply (done, failed, rejected) on the device's replies topic."""
        while True:
            reply = json.loads(self.next_on(TOPICS.replies(DEVICE), timeout)[0])
            if reply["state"] in ("done", "failed", "rejected"):
                return reply

    def press(self, name: str, payload: bytes = b"PRESS") -> None:
        self.client.publish(TOPICS.ha(DEVICE, f"set/{name}"), payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        disconnect(self.client)


def retained(port: int, topic: str) -> tuple[bytes, bool] | None:
    """What the broker keeps on ``topic``: a new subscriber gets it before a marker it sends."""
    marker = f"test/marker/{uuid.uuid4().hex}"
    fresh = HomeAssistantSide(port, [topic, marker])
    try:
        fresh.client.publish(marker, b"m", qos=1).wait_for_publish(5)
        fresh.next_on(marker)
        kept = [m for m in list(fresh.on(topic).queue) if m[1]]
        return kept[-1] if kept else None
    finally:
        fresh.close()


@pytest.fixture
def ha_device(mosquitto, cloud, compiled, signing_keys, video, tmp_path) -> Iterator[Device]:  # type: ignore[no-untyped-def]
    """An agent serving digits-cnn 1.0.0 with Home Assistant discovery on."""
    install(compiled.package, tmp_path / "state")
    device = start_device(mosquitto, cloud, signing_keys, video, tmp_path, DEPLOY + HA_SECTION)
    assert device.serving() == {"1.0.0"}
    yield device
    device.agent.stop()


def test_home_assistant_sees_the_device_and_presses_only_what_is_allowed(
    ha_device: Device, mosquitto
) -> None:  # type: ignore[no-untyped-def]
    ha = HomeAssistantSide(
        mosquitto.port,
        [DISCOVERY, TOPICS.replies(DEVICE), TOPICS.snapshot(DEVICE), "homeassistant/status"],
    )
    try:
        payload, was_retained = ha.next_on(DISCOVERY)
        assert was_retained, "the discovery must be retained"
        discovery = json.loads(payload)
        assert discovery["dev"]["ids"] == [f"edgewise_{DEVICE}"]
        commanding = {k for k, c in discovery["cmps"].items() if "command_topic" in c}
        assert commanding == {"snapshot_button"}
        assert {"label_1", "label_7"} <= set(discovery["cmps"])

        ha.client.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
        again, _ = ha.next_on(DISCOVERY)  # Home Assistant's birth: announced again
        assert json.loads(again) == discovery

        ha.press("snapshot")
        reply = ha.reply()
        assert reply["state"] == "done" and reply["id"].startswith("ha-"), reply
        jpeg, _ = ha.next_on(TOPICS.snapshot(DEVICE))
        assert jpeg[:2] == b"\xff\xd8" and len(jpeg) == reply["result"]["snapshot"]["bytes"]
        kept = retained(mosquitto.port, TOPICS.snapshot(DEVICE))
        assert kept is not None and kept[0] == jpeg

        ha.press("restart")  # not in allow: nothing runs, nothing replies
        ha.press("snapshot")  # pressed after it: its reply is the next one
        assert ha.reply()["result"].get("snapshot") is not None
        assert ha_device.agent.proc.poll() is None, "the agent stopped"
        assert ha_device.serving() == {"1.0.0"}
        assert "'restart', which [homeassistant] allow does not list" in _log_after_stop(ha_device)
    finally:
        ha.close()


def _log_after_stop(device: Device) -> str:
    """The agent's log (read once it stopped, so every line is flushed); restarts it after."""
    assert device.agent.stop() == 0, device.agent.output()[-3000:]
    output = device.agent.output()
    device.agent = AgentProcess(device.config)
    return output


def test_disabled_removes_the_device_from_home_assistant(ha_device: Device, mosquitto) -> None:  # type: ignore[no-untyped-def]
    assert retained(mosquitto.port, DISCOVERY) is not None
    assert ha_device.agent.stop() == 0
    config: Path = ha_device.config
    config.write_text(config.read_text().replace("enabled = true", "enabled = false"))
    ha = HomeAssistantSide(mosquitto.port, [DISCOVERY])
    try:
        assert ha.next_on(DISCOVERY)[1], "the retained discovery, before the agent starts"
        ha_device.agent = AgentProcess(config)
        assert ha.next_on(DISCOVERY) == (b"", False)  # the removal
        assert retained(mosquitto.port, DISCOVERY) is None
        assert ha_device.serving() == {"1.0.0"}
    finally:
        ha.close()


def test_a_press_the_broker_retained_does_not_run_again_at_connect(  # type: ignore[no-untyped-def]
    ha_device: Device, mosquitto
) -> None:
    ha = HomeAssistantSide(mosquitto.port, [TOPICS.replies(DEVICE)])
    press = TOPICS.ha(DEVICE, "set/snapshot")
    try:
        ha.client.publish(press, b"PRESS", qos=1, retain=True).wait_for_publish(5)
        assert ha.reply()["state"] == "done"  # live when it was sent: it runs once
        _log_after_stop(ha_device)  # started again: the broker hands it the retained press
        assert ha_device.serving() == {"1.0.0"}
        ha.press("snapshot")
        assert ha.reply()["state"] == "done"
        again = _log_after_stop(ha_device)
        assert "ignored a retained message" in again
        assert again.count("(snapshot) done") == 1, again  # the live press only
    finally:
        ha.client.publish(press, b"", qos=1, retain=True).wait_for_publish(5)
        ha.close()
