"""The cloud side's MQTT client (paho-mqtt 2.x), connected before it is returned: MQTT 5 where
the broker speaks it, 3.1.1 where it does not."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.contract.broker import BrokerCapabilities, unsupported_protocol, without_delay

from ..errors import BrokerUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    # TLS when ``ca`` is set: the broker's CA, and this client's certificate and key (the
    # certificate is the identity on a broker with use_identity_as_username).
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


# MQTT 5's Session Expiry Interval for a persistent session: never expires (as in 3.1.1).
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


class _Handshake:
    """What came back for one CONNECT: a CONNACK (refused or not), or the connection closed."""

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.answered.clear()
        self.refused: str | None = None
        self.closed = False  # closed by the broker before any CONNACK
        self.properties: object = None

    def on_connect(
        self,
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: mqtt.Properties | None,
    ) -> None:
        if self.answered.is_set():
            return  # a reconnect later on is not this handshake's business
        if reason_code.is_failure:
            self.refused = str(reason_code)
        self.properties = properties
        self.answered.set()

    def on_disconnect(self, *_args: object) -> None:
        if not self.answered.is_set():
            self.closed = True
            self.answered.set()

    @property
    def refuses_v5(self) -> bool:
        """CONNACK "Unsupported protocol version" (NATS 2.9 answers so), or the connection
        closed with no CONNACK (RabbitMQ 3.10 cannot parse an MQTT 5 CONNECT and hangs up)."""
        return self.closed or (self.refused is not None and unsupported_protocol(self.refused))


def connect(
    address: BrokerAddress,
    client_id: str | None = None,
    timeout: float = 10.0,
    clean_session: bool = True,
    prepare: Callable[[mqtt.Client], None] | None = None,
) -> mqtt.Client:
    """A started client (network loop running); raises BrokerUnavailable on failure.

    It speaks MQTT 5 first, and MQTT 3.1.1 to a broker that refuses 5 (the same client object
    either way; :func:`capabilities` tells which, and what the broker's CONNACK offered).
    ``clean_session`` False is, in MQTT 5, no clean start and a session that never expires.

    ``prepare(client)`` runs just before CONNECT: a persistent session's queued messages arrive
    right after CONNACK, so their handlers must be in place by then."""
    client = _new_client(address, client_id)
    handshake = _Handshake()
    client.on_connect = handshake.on_connect
    client.on_disconnect = handshake.on_disconnect
    if prepare is not None:
        prepare(client)  # a handler that wraps on_connect wraps the handshake's
    where = f"{address.host}:{address.port}"
    _send_connect(client, address, handshake, clean_session, timeout)
    protocol = "5"
    if handshake.refuses_v5:
        log.debug("the broker at %s does not speak MQTT 5; speaking MQTT 3.1.1", where)
        client.loop_stop()
        _speak_311(client, clean_session)
        handshake.reset()
        _send_connect(client, address, handshake, clean_session, timeout)
        protocol = "3.1.1"
    if not handshake.answered.is_set() or handshake.refused or handshake.closed:
        client.loop_stop()
        raise _unavailable(where, handshake, timeout)
    found = BrokerCapabilities.from_properties(handshake.properties, protocol)
    client._edgewise_capabilities = found  # type: ignore[attr-defined]
    return client


def _send_connect(
    client: mqtt.Client,
    address: BrokerAddress,
    handshake: _Handshake,
    clean_session: bool,
    timeout: float,
) -> None:
    """CONNECT, then wait up to ``timeout`` for its answer (the network loop keeps running)."""
    where = f"{address.host}:{address.port}"
    try:
        if client.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            if not clean_session:
                properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
            client.connect(
                address.host,
                address.port,
                keepalive=30,
                clean_start=clean_session,
                properties=properties,
            )
        else:
            client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:  # refused, unresolvable name, TLS handshake failure
        raise BrokerUnavailable(
            f"cannot reach the broker at {where}: {exc.strerror or exc}; check --host/--port"
        ) from exc
    client.loop_start()
    try:
        handshake.answered.wait(timeout)
    except KeyboardInterrupt:
        client.loop_stop()
        raise


def _speak_311(client: mqtt.Client, clean_session: bool) -> None:
    """Turn an MQTT 5 client (not connected) into a 3.1.1 one; paho keeps everything else."""
    client._protocol = mqtt.MQTTv311
    client._clean_session = clean_session
    client._connect_properties = None


def _new_client(address: BrokerAddress, client_id: str | None) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"edgewise-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(64)  # a push keeps a window of chunks in flight
    without_delay(client)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.ca is not None:
        try:
            client.tls_set(
                ca_certs=str(address.ca),
                certfile=str(address.cert) if address.cert else None,
                keyfile=str(address.key) if address.key else None,
            )
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot load TLS files: {exc}") from exc
    return client


def _unavailable(where: str, handshake: _Handshake, timeout: float) -> BrokerUnavailable:
    if handshake.refused:
        return BrokerUnavailable(
            f"the broker at {where} refused the connection: {handshake.refused}; "
            "check --username/--password or the --tls-* files"
        )
    if handshake.closed:
        return BrokerUnavailable(
            f"the broker at {where} closed the connection without answering CONNECT; "
            "check --port (an MQTT listener?), --username/--password and the --tls-* files"
        )
    return BrokerUnavailable(
        f"cannot reach the broker at {where}: no answer to CONNECT in {timeout:g} s; "
        "check --host/--port"
    )


def capabilities(client: mqtt.Client) -> BrokerCapabilities:
    """What the broker this client is connected to offers, as its CONNACK said."""
    found = getattr(client, "_edgewise_capabilities", None)
    return found if isinstance(found, BrokerCapabilities) else BrokerCapabilities()


def disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


class Subscriber:
    """Subscribes and waits for the broker's SUBACK of exactly that request.

    It owns the client's ``on_subscribe``; SUBACKs are recorded by message id as they come, so
    one that arrives before ``subscribe`` learned its id is not missed.
    """

    def __init__(self, client: mqtt.Client):
        self._client = client
        self._acked: dict[int, list[mqtt.ReasonCode]] = {}
        self._cond = threading.Condition()
        client.on_subscribe = self._on_subscribe

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[mqtt.ReasonCode],
        _properties: object,
    ) -> None:
        with self._cond:
            self._acked[mid] = list(reason_codes)
            self._cond.notify_all()

    def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> None:
        """Raises BrokerUnavailable if the request cannot be sent, is not answered within
        ``timeout`` or is refused (an ACL that does not grant the filter)."""
        rc, mid = self._client.subscribe(filters)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerUnavailable(f"cannot subscribe: {mqtt.error_string(rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acked, timeout):
                raise BrokerUnavailable(
                    f"the broker did not confirm the subscription in {timeout:g} s"
                )
            codes = self._acked.pop(mid)
        for (topic_filter, _qos), code in zip(filters, codes, strict=False):
            if code.is_failure:
                raise BrokerUnavailable(
                    f"the broker refused the subscription to {topic_filter} ({code}); "
                    "check its ACL for this client"
                )
