"""The agent's MQTT link on a real Mosquitto: nothing leaves it over the cap, and with MQTT 5 it
learns the broker's cap from CONNACK and announces its own in CONNECT. On a real 3.1.1-only
broker (NATS), an agent configured for MQTT 5 falls back to 3.1.1 and says so in telemetry."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import NatsServer
from helpers import AgentProcess

from agent.comms.link import MqttLink
from agent.config import MqttConfig
from agent.contract import Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, capabilities, connect, disconnect
from compiler.recipe.demo import write_agent_config


def _link(broker: MosquittoBroker, **mqtt: object) -> MqttLink:
    config = MqttConfig(host=broker.host, port=broker.port, **mqtt)  # type: ignore[arg-type]
    birth = {"state": "online", "detail": "x" * 10_000}  # a status over the 2 KiB cap
    link = MqttLink(
        config, "edgewise-agent-cam-9", will=("t/cam-9/status", b'{"state":"offline"}'),
        birth=lambda: ("t/cam-9/status", json.dumps(birth).encode()),
    )  # fmt: skip
    link.start()
    assert link.connected.wait(10), "the link did not connect"
    return link


class Inbox:
    def __init__(self, broker: MosquittoBroker, topic_filter: str):
        self.messages: list[bytes] = []
        self.arrived = threading.Condition()
        self.client = connect(BrokerAddress(broker.host, broker.port))
        self.client.on_message = self._on_message
        Subscriber(self.client).subscribe([(topic_filter, 1)])

    def _on_message(self, _client, _userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self.arrived:
            self.messages.append(bytes(msg.payload))
            self.arrived.notify_all()

    def wait(self, count: int) -> list[bytes]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, 10), self.messages
            return list(self.messages)


@pytest.fixture
def capped() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(extra_config="max_packet_size 16384\nlog_type all\n").start()
    yield broker
    broker.close()


def test_events_and_status_over_the_cap_go_out_shortened(mosquitto: MosquittoBroker) -> None:
    inbox = Inbox(mosquitto, "t/cam-9/#")
    link = _link(mosquitto)
    try:
        event = {"type": "deployment", "state": "rejected", "reason": "echo " + "B" * 1_260_000}
        link.publish("t/cam-9/events", json.dumps(event).encode()).wait_for_publish(10)
        messages = [json.loads(m) for m in inbox.wait(2)]
    finally:
        link.stop()
        disconnect(inbox.client)
    status = next(m for m in messages if "state" in m and m["state"] == "online")
    shortened = next(m for m in messages if m.get("type") == "deployment")
    assert status["truncated"] and len(status["detail"]) < 300
    assert shortened["truncated"] and shortened["state"] == "rejected"
    assert all(len(json.dumps(m)) <= 2048 for m in messages)
    assert link.shortened == 2
    assert "oversize" not in mosquitto.log_path.read_text()


def test_mqtt311_sends_up_to_the_configured_cap(capped: MosquittoBroker) -> None:
    link = _link(capped, max_packet_bytes=8192)
    try:
        assert link.max_packet == 8192
        assert link.publish_batch("t/cam-9/results", b"[" + b"1," * 5000 + b"1]") is None
        info = link.publish_batch("t/cam-9/results", b"[" + b"1," * 3000 + b"1]")
        assert info is not None
        info.wait_for_publish(10)
    finally:
        link.stop()


def test_mqtt5_takes_the_brokers_cap_from_connack(capped: MosquittoBroker) -> None:
    link = _link(capped, protocol="5")  # configured 512 KiB; the broker allows 16 KiB
    try:
        assert link.max_packet == 16384
        assert link.publish_batch("t/cam-9/results", b"[" + b"1," * 9000 + b"1]") is None
    finally:
        link.stop()


def test_mqtt5_announces_its_cap_so_the_broker_drops_bigger_messages(
    mosquitto: MosquittoBroker,
) -> None:
    got: list[bytes] = []
    arrived = threading.Condition()

    def handler(_topic: str, payload: bytes) -> None:
        with arrived:
            got.append(payload[:1])
            arrived.notify_all()

    cloud = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    link = _link(mosquitto, protocol="5", max_packet_bytes=8192)
    try:
        # Retained, so both reach the device when it subscribes, in one go.
        for topic, payload in (("big", b"x" * 50_000), ("small", b"y" * 100)):
            cloud.publish(f"t/cam-9/deploy/{topic}", payload, 1, retain=True).wait_for_publish(10)
        link.subscribe("t/cam-9/deploy/#", handler)
        with arrived:
            assert arrived.wait_for(lambda: b"y" in got, 10), got
        # The broker delivers in order: once this arrives, the big one would have before it.
        cloud.publish("t/cam-9/deploy/end", b"z", qos=1).wait_for_publish(10)
        with arrived:
            assert arrived.wait_for(lambda: b"z" in got, 10), got
    finally:
        disconnect(cloud)
        link.stop()
    assert got == [b"y", b"z"], "the 50 KB message never reached the device"
    assert "Dropping too large outgoing PUBLISH for edgewise-agent-cam-9" in (
        mosquitto.log_path.read_text()
    )


def test_the_link_records_what_the_broker_offers(capped: MosquittoBroker) -> None:
    link = _link(capped, protocol="5")
    try:
        caps = link.capabilities
    finally:
        link.stop()
    assert caps.protocol == "5" and caps.maximum_packet_size == 16384
    assert caps.retain_available and caps.shared_subscription_available and caps.maximum_qos == 2


def test_an_agent_asking_for_mqtt5_falls_back_to_311_on_a_311_only_broker(
    tmp_path: Path, video: Path, signing_keys: tuple[Path, Path]
) -> None:
    """NATS answers MQTT 5 with "unsupported protocol version": the agent reconnects in 3.1.1,
    comes online, and its telemetry (which re-announces the status) says ``protocol: 3.1.1``."""
    topics = Topics()
    seen: dict[str, dict[str, object]] = {}
    states: list[object] = []  # the status messages' states, in order
    arrived = threading.Condition()

    def on_message(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        with arrived:
            leaf, message = msg.topic.rsplit("/", 1)[-1], json.loads(msg.payload)
            seen[leaf] = message
            if leaf == "status":
                states.append(message.get("state"))
            arrived.notify_all()

    def fell_back() -> bool:
        broker = seen.get("telemetry", {}).get("broker")
        online = "online" in states
        return online and isinstance(broker, dict) and broker.get("protocol") == "3.1.1"

    with NatsServer(tmp_path) as server:
        nats = BrokerAddress(server.host, server.mqtt_port)
        cloud = connect(nats)
        cloud.on_message = on_message
        Subscriber(cloud).subscribe([(topics.device("cam-1", "+"), 1)])
        config = write_agent_config(
            tmp_path / "agent.toml", port=nats.port, public_keys=[signing_keys[1]], video=video,
            state=tmp_path / "state", device="cam-1", extra="[telemetry]\ninterval_s = 0.5\n",
        )  # fmt: skip
        config.write_text(config.read_text().replace("[mqtt]\n", '[mqtt]\nprotocol = "5"\n'))
        agent = AgentProcess(config)
        try:
            with arrived:
                assert arrived.wait_for(fell_back, 30), f"{seen}\n{agent.output()[-3000:]}"
        finally:
            agent.stop()
            disconnect(cloud)
    assert capabilities(cloud).protocol == "3.1.1"
    assert seen["telemetry"]["state"] == "online"
    assert "refuses MQTT 5; speaking MQTT 3.1.1" in agent.output()
