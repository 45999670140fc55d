"""The cloud side's MQTT client (paho-mqtt 2.x), connected before it is returned."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.contract.broker import BrokerCapabilities

from ..errors import BrokerUnavailable


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


def connect(
    address: BrokerAddress,
    client_id: str | None = None,
    timeout: float = 10.0,
    clean_session: bool = True,
    prepare: Callable[[mqtt.Client], None] | None = None,
) -> mqtt.Client:
    """A started client (network loop running); raises BrokerUnavailable on failure.

    ``prepare(client)`` runs just before CONNECT: a persistent session's queued messages arrive
    right after CONNACK, so their handlers must be in place by then."""
    client = _new_client(address, client_id, clean_session)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        _p: mqtt.Properties | None,
    ) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    if prepare is not None:
        prepare(client)
    where = f"{address.host}:{address.port}"
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:  # refused, unresolvable name, TLS handshake failure
        raise BrokerUnavailable(
            f"cannot reach the broker at {where}: {exc.strerror or exc}; check --host/--port"
        ) from exc
    client.loop_start()
    try:
        answered = connected.wait(timeout)
    except KeyboardInterrupt:
        client.loop_stop()
        raise
    if not answered or refused:
        client.loop_stop()
        raise _unavailable(where, refused, timeout)
    return client


def _new_client(address: BrokerAddress, client_id: str | None, clean_session: bool) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"edgewise-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
        # False with a fixed client id: the broker keeps the subscription and queues QoS 1
        # messages while this client is away (a consumer that must not miss results).
        clean_session=clean_session,
    )
    client.max_inflight_messages_set(64)  # a push keeps a window of chunks in flight
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


def _unavailable(where: str, refused: list[str], timeout: float) -> BrokerUnavailable:
    if refused:
        return BrokerUnavailable(
            f"the broker at {where} refused the connection: {refused[0]}; "
            "check --username/--password or the --tls-* files"
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
