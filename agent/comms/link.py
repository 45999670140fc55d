"""The agent's MQTT connection (paho-mqtt 2.x): reconnects by itself, re-subscribes, sends a
retained birth message on every connect and leaves a retained last will.

Nothing is published over the packet cap (:mod:`agent.comms.sizing`): ``[mqtt]
max_packet_bytes``, or less when an MQTT 5 broker says so in CONNACK. With MQTT 5 the agent
also announces the cap in CONNECT, so the broker drops a bigger message instead of delivering
it to the device.

With ``[mqtt] urls`` it fails over: a lost connection or a failed connect moves to the next
broker or cluster node (:mod:`agent.comms.failover`), where the birth, will and subscriptions
are set up again as on any reconnect. What the broker offers (CONNACK's MQTT 5 properties) is
kept in ``capabilities`` (:class:`agent.contract.broker.BrokerCapabilities`): no QoS above its
Maximum QoS, no retained message where retain is unavailable. A broker that refuses MQTT 5 is
spoken to in 3.1.1 from then on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.comms.failover import Failover
from agent.comms.sizing import SMALL_MESSAGE_BYTES, payload_budget, shorten
from agent.config import MqttConfig
from agent.contract.broker import BrokerCapabilities, unsupported_protocol, without_delay

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class Request:
    """An MQTT 5 request's reply fields (PUBLISH properties); empty over 3.1.1."""

    response_topic: str | None = None
    correlation_data: bytes | None = None


RequestHandler = Callable[[str, bytes, Request], None]


def request_of(msg: mqtt.MQTTMessage) -> Request:
    props = getattr(msg, "properties", None)
    if props is None:
        return Request()
    topic = getattr(props, "ResponseTopic", None)
    data = getattr(props, "CorrelationData", None)
    return Request(topic if isinstance(topic, str) else None, bytes(data) if data else None)


def configure_client(client: mqtt.Client, config: MqttConfig) -> None:
    """Credentials and TLS (the client certificate is the identity) from the config; packets
    sent without delay."""
    without_delay(client)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.tls is not None:
        client.tls_set(
            ca_certs=str(config.tls.ca_file),
            certfile=str(config.tls.cert_file),
            keyfile=str(config.tls.key_file),
        )


def _client(config: MqttConfig, client_id: str) -> mqtt.Client:
    if config.protocol == "5":
        # Clean start and no session expiry: like a 3.1.1 clean session.
        return mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )


class MqttLink:
    """One paho client, its network thread, and the subscriptions the agent holds.

    Handlers run on paho's network thread: they must only hand work to a queue.
    """

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        will: tuple[str, bytes],
        birth: Callable[[], tuple[str, bytes]],
    ):
        self._config = config
        self._birth = birth
        self._filters: dict[str, int] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.epoch = 0  # counts connections, so a sender can tell a reconnect happened
        self._ack_handlers: list[Callable[[int], None]] = []
        self._connect_handlers: list[Callable[[], None]] = []
        self._protocol = config.protocol  # "5" until a broker refuses it
        self.capabilities = BrokerCapabilities(protocol=self._protocol)  # from the last CONNACK
        self.failover = Failover(config.endpoints, config.reconnect_max_delay)
        self.shortened = 0  # messages over the cap sent shortened
        client = _client(config, client_id)
        configure_client(client, config)
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=int(config.reconnect_max_delay))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        self._client = client

    @property
    def max_packet(self) -> int:
        """The largest packet this connection may send: the configured cap, or the broker's."""
        configured = self._config.max_packet_bytes
        broker = self.capabilities.maximum_packet_size
        return min(configured, broker) if broker else configured

    def _qos(self, wanted: int) -> int:
        return self.capabilities.qos(wanted)

    def start(self) -> None:
        host, port = self.failover.current
        if self._protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = self._config.max_packet_bytes
            self._client.connect_async(
                host, port, self._config.keepalive, clean_start=True, properties=properties
            )
        else:
            self._client.connect_async(host, port, self._config.keepalive)
        self._client.loop_start()

    def stop(self, goodbye: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Publish a last message (e.g. offline status), then disconnect."""
        if goodbye and self.connected.is_set():
            info = self.publish(goodbye[0], goodbye[1], qos=1, retain=True)
            info.wait_for_publish(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(
        self, topic_filter: str, handler: MessageHandler, qos: int = 1, live_only: bool = False
    ) -> None:
        """Route matching messages to ``handler`` and hold the subscription across reconnects.
        ``live_only``: retained messages are dropped (a button press kept by the broker would
        run again at every connect: a restart loop)."""
        self.route(topic_filter, handler, live_only)
        self.hold([topic_filter], qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self.release([topic_filter])
        self.unroute(topic_filter)

    def route(self, topic_filter: str, handler: MessageHandler, live_only: bool = False) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` (no broker subscription)."""

        def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
            if live_only and msg.retain:
                log.warning("ignored a retained message on %s (only live ones count)", msg.topic)
                return
            handler(msg.topic, bytes(msg.payload))

        self._client.message_callback_add(topic_filter, on_message)

    def subscribe_requests(self, topic_filter: str, handler: RequestHandler, qos: int = 1) -> None:
        """As :meth:`subscribe`, the handler also getting the MQTT 5 reply fields."""

        def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
            handler(msg.topic, bytes(msg.payload), request_of(msg))

        self._client.message_callback_add(topic_filter, on_message)
        self.hold([topic_filter], qos)

    def unroute(self, topic_filter: str) -> None:
        self._client.message_callback_remove(topic_filter)

    def hold(self, topics: list[str], qos: int = 1) -> None:
        """Subscribe at the broker (in one packet) and again after every reconnect."""
        with self._lock:
            self._filters.update(dict.fromkeys(topics, qos))
        if topics and self.connected.is_set():
            self._client.subscribe([(t, self._qos(qos)) for t in topics])

    def release(self, topics: list[str]) -> None:
        with self._lock:
            for topic in topics:
                self._filters.pop(topic, None)
        if topics and self.connected.is_set():
            self._client.unsubscribe(topics)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
        small: bool = True,
    ) -> mqtt.MQTTMessageInfo:
        """An event, status or telemetry message: one over ``SMALL_MESSAGE_BYTES`` (or the
        packet cap) goes out shortened (:func:`agent.comms.sizing.shorten`), never oversize."""
        limit = payload_budget(topic, self.max_packet)  # small=False: a reply, up to the cap
        limit = min(SMALL_MESSAGE_BYTES, limit) if small else limit
        if len(payload) > limit:
            self.shortened += 1
            log.warning(
                "a %d-byte message on %s is over the %d-byte cap; sent shortened",
                len(payload),
                topic,
                limit,
            )
            payload = shorten(payload, limit)
        retain = retain and self.capabilities.retain_available
        properties = None
        if correlation is not None and self._protocol == "5":  # a reply to an MQTT 5 request
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        return self._client.publish(
            topic, payload, qos=self._qos(qos), retain=retain, properties=properties
        )

    def publish_bytes(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Data that must not be shortened (a snapshot's chunk) at QoS 1; False when it is over
        the packet cap or the link is down (nothing sent)."""
        if len(payload) > payload_budget(topic, self.max_packet) or not self.connected.is_set():
            return False
        retain = retain and self.capabilities.retain_available
        self._client.publish(topic, payload, qos=self._qos(1), retain=retain)
        return True

    def publish_batch(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo | None:
        """A results batch at QoS 1, or None when it is over the packet cap (which an MQTT 5
        broker may have lowered since the batch was made): the caller makes a smaller one."""
        if len(payload) > payload_budget(topic, self.max_packet):
            return None
        return self._client.publish(topic, payload, qos=self._qos(1))

    def on_ack(self, handler: Callable[[int], None]) -> None:
        """Call ``handler(mid)`` on paho's thread when the broker acknowledges a QoS 1 publish."""
        self._ack_handlers.append(handler)

    def on_connected(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` on paho's thread after every connect (subscriptions renewed)."""
        self._connect_handlers.append(handler)

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        if reason_code.is_failure:  # MQTT 5 only: the broker took the message but refused it
            log.error("the broker refused a message: %s", reason_code)
        for handler in self._ack_handlers:
            handler(mid)

    def announce(self) -> None:
        """Re-send the birth message, e.g. after the serving model changed."""
        if self.connected.is_set():
            topic, payload = self._birth()
            self.publish(topic, payload, qos=1, retain=True)

    def _on_connect(self, client, _userdata, _flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if self._protocol == "5" and unsupported_protocol(reason_code):
                self._fall_back_to_311(client)
            else:
                log.error("broker %s refused connection: %s", self.failover.where, reason_code)
            return
        self.failover.connected()
        self.capabilities = BrokerCapabilities.from_properties(properties, self._protocol)
        log.info(
            "connected to %s (MQTT %s); packets up to %d bytes",
            self.failover.where,
            self._protocol,
            self.max_packet,
        )
        with self._lock:
            filters = [(t, self._qos(q)) for t, q in self._filters.items()]
        if filters:
            client.subscribe(filters)
        self.epoch += 1
        self.connected.set()
        self.announce()
        for handler in self._connect_handlers:
            handler()

    def _fall_back_to_311(self, client: mqtt.Client) -> None:
        """The broker does not speak MQTT 5: reconnect in 3.1.1 (paho keeps the rest)."""
        log.warning(
            "broker %s refuses MQTT 5; speaking MQTT 3.1.1 from now on", self.failover.where
        )
        self._protocol = "3.1.1"
        client._protocol = mqtt.MQTTv311
        client._clean_session = True
        client._connect_properties = None

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.connected.clear()
        if reason_code.is_failure:
            log.warning("disconnected from %s: %s", self.failover.where, reason_code)
            self._next_node()

    def _on_connect_fail(self, _client, _userdata) -> None:
        log.warning("cannot connect to %s", self.failover.where)
        self._next_node()

    def _next_node(self) -> None:
        """Point paho's own reconnect (on its network thread) at the next node, after a
        jittered wait."""
        delay = self.failover.failed()
        self._client._host, self._client._port = self.failover.current
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        log.info("reconnecting to %s in %.1f s", self.failover.where, delay)
