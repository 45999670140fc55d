"""What a broker offers, as its CONNACK says (MQTT 5 properties), for the agent and the cloud.

An MQTT 3.1.1 broker says nothing: the defaults are what MQTT 5 assumes when a property is
absent (retain and shared subscriptions available, QoS 2, no packet cap, 65535 in flight).
Pure: it reads any object with the property names paho-mqtt gives them (``RetainAvailable``,
``SharedSubscriptionAvailable``, ``MaximumQoS``, ``MaximumPacketSize``, ``ReceiveMaximum``).
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from typing import Any

# CONNACK reason 0x84 (MQTT 5) and return code 1 (3.1.1): the broker does not speak this version.
UNSUPPORTED_PROTOCOL = "Unsupported protocol version"


@dataclass(frozen=True)
class BrokerCapabilities:
    protocol: str = "3.1.1"  # "5" or "3.1.1": what this connection speaks
    retain_available: bool = True
    shared_subscription_available: bool = True
    maximum_qos: int = 2
    maximum_packet_size: int | None = None  # bytes; None: the broker named no cap
    receive_maximum: int = 65535

    @classmethod
    def from_properties(cls, properties: object, protocol: str = "5") -> BrokerCapabilities:
        """Read a CONNACK's properties (None or a 3.1.1 connection: the defaults)."""
        if properties is None or protocol != "5":
            return cls(protocol=protocol)

        def read(name: str, default: int) -> int:
            value = getattr(properties, name, None)
            return value if isinstance(value, int) and not isinstance(value, bool) else default

        packet = read("MaximumPacketSize", 0)
        return cls(
            protocol=protocol,
            retain_available=bool(read("RetainAvailable", 1)),
            shared_subscription_available=bool(read("SharedSubscriptionAvailable", 1)),
            maximum_qos=min(2, max(0, read("MaximumQoS", 2))),
            maximum_packet_size=packet if packet > 0 else None,
            receive_maximum=max(1, read("ReceiveMaximum", 65535)),
        )

    def qos(self, wanted: int) -> int:
        """``wanted`` or the broker's Maximum QoS, whichever is lower."""
        return min(wanted, self.maximum_qos)

    def as_dict(self) -> dict[str, object]:
        """The telemetry ``broker`` field."""
        return asdict(self)


def unsupported_protocol(reason: object) -> bool:
    """Whether a CONNACK reason (paho's ReasonCode or its text) refuses the protocol version."""
    return str(reason).strip().lower() == UNSUPPORTED_PROTOCOL.lower()


def without_delay(client: Any) -> None:
    """Have a paho client send each packet at once (TCP_NODELAY on every socket it opens).
    MQTT packets are small: with Nagle's algorithm a QoS 1 publish waits for the peer's delayed
    ACK, 40 ms on Linux for each hop (a command's round trip measured 88 ms on loopback, 0.6 ms
    with no delay here and ``set_tcp_nodelay true`` in Mosquitto)."""

    def on_socket_open(_client: Any, _userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # plain or TLS; not a websocket wrapper
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = on_socket_open
