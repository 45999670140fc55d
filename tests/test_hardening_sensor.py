"""Issue 12 for ``mqtt:`` sensor sources on a real Mosquitto: big messages are dropped in paho's
callback, the queue is bounded by count and bytes, hostile JSON is garbage, not a crash."""

from __future__ import annotations

import threading
import time

from agent.config import MqttConfig, SensorConfig
from agent.sources.sensor_inputs import MQTT_MAX_MESSAGE, MQTT_QUEUE, MQTT_QUEUE_BYTES
from agent.sources.sensors import SensorSource

TOPIC = "plant/line-1/vibration"


def _source(mosquitto) -> SensorSource:  # type: ignore[no-untyped-def]
    config = SensorConfig(kind="sensor", uri=f"mqtt:{TOPIC}", format="json")
    source = SensorSource(config, MqttConfig(host=mosquitto.host, port=mosquitto.port))
    source.open()
    return source


def test_big_and_hostile_sample_messages_are_dropped(mosquitto, cloud) -> None:  # type: ignore[no-untyped-def]
    source = _source(mosquitto)
    stop = threading.Event()
    try:
        big = b"[" + b"1," * (4 * 2**20) + b"1]"  # 8 MiB of numbers
        hostile = [b"[" * 2000 + b"]" * 2000, b"[NaN]", b'{"x": 1, "x": 2}', b'["\\ud800"]']
        for payload in [big] * 10 + hostile + [b"[1.5, 2.5]"]:
            cloud.publish(TOPIC, payload, qos=1).wait_for_publish(30)
        frame = source.read(stop)
        assert frame is not None and frame.image.tolist() == [[1.5, 2.5]]
        assert source._input.oversize == 10  # type: ignore[union-attr]
        assert source.garbage == len(hostile)
    finally:
        source.close()


def test_the_sample_queue_is_bounded_by_count_and_bytes(mosquitto, cloud) -> None:  # type: ignore[no-untyped-def]
    source = _source(mosquitto)
    try:
        sample = b"[" + b"1.0," * ((MQTT_MAX_MESSAGE - 8) // 4) + b"1.0]"
        assert len(sample) <= MQTT_MAX_MESSAGE
        count = MQTT_QUEUE_BYTES // len(sample) + 500  # 2 MB more than the queue may hold
        for _ in range(count):  # one at a time, so the broker's own queue never drops any
            cloud.publish(TOPIC, sample, qos=1).wait_for_publish(30)
        cloud.publish(TOPIC, b"[7.0]", qos=1).wait_for_publish(30)
        queue = source._input._queue  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(queue) + source.overflow < count + 1:  # not read: each is queued or dropped
            assert time.monotonic() < deadline, (len(queue), source.overflow)
            time.sleep(0.05)
        assert len(queue) <= MQTT_QUEUE_BYTES // len(sample) + 1 <= MQTT_QUEUE
        assert source.overflow >= 500
        kept = [queue.get(0) for _ in range(len(queue))]
        assert kept[-1][1] == b"[7.0]"  # the newest stay, the oldest went
    finally:
        source.close()
