"""The sensor source's MQTT input on a real Mosquitto: windows from a topic, overflow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from source_reading import TIMEOUT, read_in_thread, rows

from agent.config import MqttConfig, SensorConfig
from agent.errors import SourceError
from agent.sources import Frame, sensor_inputs
from agent.sources.sensors import SensorSource
from compiler.fleet.broker import MosquittoBroker, free_port


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


@pytest.fixture
def publisher(mosquitto: MosquittoBroker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def mqtt_sensor(broker: MosquittoBroker, topic: str, **options: object) -> SensorSource:
    config = SensorConfig(kind="sensor", uri=f"mqtt:{topic}", **options)  # type: ignore[arg-type]
    return SensorSource(config, MqttConfig(host=broker.host, port=broker.port))


def test_mqtt_topic_windows(mosquitto: MosquittoBroker, publisher: mqtt.Client, stop) -> None:
    source = mqtt_sensor(mosquitto, "plant/line1/vibration", format="json", window=3, hop=2)
    source.open()  # returns once subscribed: nothing published from here on is missed
    try:
        assert not source.is_file
        payloads = ["[0, 0]", "[1, 10]", "not json", "[2, 20]", "[3, 30]", "[4, 40]", "[5]"]
        for payload in payloads:
            publisher.publish("plant/line1/vibration", payload, qos=1).wait_for_publish(TIMEOUT)
        frames = [read_in_thread(source.read, stop).get(timeout=TIMEOUT) for _ in range(2)]
        assert [rows(f) for f in frames if isinstance(f, Frame)] == [
            [[0, 0], [1, 10], [2, 20]],
            [[2, 20], [3, 30], [4, 40]],
        ]
        # The last two payloads are garbage; wait for the one after them to know they arrived.
        publisher.publish("plant/line1/vibration", "[6, 60]", qos=1)
        publisher.publish("plant/line1/vibration", "[7, 70]", qos=1)
        third = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        assert isinstance(third, Frame) and rows(third) == [[4, 40], [6, 60], [7, 70]]
        assert source.garbage == 2 and source.overflow == 0
    finally:
        source.close()


def test_mqtt_overflow_drops_the_oldest(
    mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch, stop
) -> None:
    monkeypatch.setattr(sensor_inputs, "MQTT_QUEUE", 4)
    source = mqtt_sensor(mosquitto, "plant/overflow")
    source.open()
    try:
        deliver = source._input._guarded_message  # type: ignore[union-attr]
        before = time.time()
        for i in range(10):  # as paho's thread would, faster than read() takes them
            deliver(None, None, SimpleNamespace(payload=str(i).encode()))
        delivered = time.time()
        frames = [source.read(stop) for _ in range(4)]
        assert [rows(f) for f in frames if f] == [[[6]], [[7]], [[8]], [[9]]]
        assert all(before <= f.captured_at <= delivered for f in frames if f)  # arrival time
        assert source.overflow == 6 and source.garbage == 0
    finally:
        source.close()
    assert source.overflow == 6  # kept after close


def test_mqtt_broker_down_at_open_is_named() -> None:
    config = SensorConfig(kind="sensor", uri="mqtt:plant/nobody")
    source = SensorSource(config, MqttConfig(host="127.0.0.1", port=free_port()))
    with pytest.raises(SourceError, match=r"plant/nobody.*cannot reach broker"):
        source.open()
