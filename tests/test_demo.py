"""The README's main command, on the embedded broker it falls back to without mosquitto."""

from __future__ import annotations

import threading
from pathlib import Path

from compiler.broker import EmbeddedBroker
from compiler.demo import run_demo
from compiler.mqtt import BrokerAddress, connect, disconnect


def test_embedded_broker_relays_retained_and_qos1() -> None:
    broker = EmbeddedBroker().start()
    try:
        publisher = connect(BrokerAddress(broker.host, broker.port))
        publisher.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
        got = threading.Event()
        received: list[bytes] = []
        subscriber = connect(BrokerAddress(broker.host, broker.port))
        subscriber.on_message = lambda _c, _u, msg: (received.append(msg.payload), got.set())
        subscriber.subscribe("t/#", qos=1)
        assert got.wait(10) and received == [b"kept"]
        disconnect(publisher)
        disconnect(subscriber)
    finally:
        broker.stop()


def test_demo_end_to_end_on_embedded_broker(tmp_path: Path) -> None:
    outcome = run_demo(tmp_path, digits=20, prefer_embedded=True)
    assert outcome.results >= 50
    assert outcome.accuracy >= 0.9
