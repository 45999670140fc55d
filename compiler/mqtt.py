"""The cloud side's MQTT client (paho-mqtt 2.x), connected before it is returned."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from .errors import BrokerUnavailable


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
) -> mqtt.Client:
    """A started client (network loop running); raises BrokerUnavailable on failure."""
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
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c, _u, _f, reason_code, _p):  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot reach broker {address.host}:{address.port}: {exc}"
        ) from exc
    client.loop_start()
    if not connected.wait(timeout) or refused:
        client.loop_stop()
        reason = refused[0] if refused else f"no answer in {timeout} s"
        raise BrokerUnavailable(f"broker {address.host}:{address.port} refused: {reason}")
    return client


def disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
