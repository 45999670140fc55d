"""What a broker offers (CONNACK properties) and where the link goes next, without a broker."""

from __future__ import annotations

from types import SimpleNamespace

from agent.comms.failover import Failover
from agent.contract.broker import BrokerCapabilities, unsupported_protocol


def test_capabilities_from_connack_properties() -> None:
    props = SimpleNamespace(
        RetainAvailable=0,
        SharedSubscriptionAvailable=0,
        MaximumQoS=1,
        MaximumPacketSize=16384,
        ReceiveMaximum=20,
    )
    caps = BrokerCapabilities.from_properties(props)
    assert caps.as_dict() == {
        "protocol": "5",
        "retain_available": False,
        "shared_subscription_available": False,
        "maximum_qos": 1,
        "maximum_packet_size": 16384,
        "receive_maximum": 20,
    }
    assert caps.qos(2) == 1 and caps.qos(0) == 0


def test_absent_properties_mean_what_mqtt5_assumes() -> None:
    assert BrokerCapabilities.from_properties(SimpleNamespace()) == BrokerCapabilities(protocol="5")
    caps = BrokerCapabilities.from_properties(None, "3.1.1")
    assert caps.maximum_qos == 2 and caps.maximum_packet_size is None and caps.protocol == "3.1.1"
    assert unsupported_protocol("Unsupported protocol version")
    assert not unsupported_protocol("Not authorized")


def test_failover_rotates_with_a_capped_jittered_backoff() -> None:
    low = Failover([("a", 1883), ("b", 1883)], max_delay_s=30, uniform=lambda lo, hi: lo)
    high = Failover([("a", 1883), ("b", 1883)], max_delay_s=30, uniform=lambda lo, hi: hi)
    waits = [low.failed() for _ in range(8)]
    assert low.current == ("a", 1883)  # eight moves: back where it began
    assert waits[:3] == [0.8, 1.6, 3.2] and waits[-1] == 24.0  # 30 s cap, -20%
    assert [high.failed() for _ in range(8)][-1] == 36.0  # +20%
    assert high.where == "a:1883 (node 1 of 2)"
    low.connected()
    assert low.failed() == 0.8
