"""The MQTT subscriptions that feed a Board: every device's status, telemetry, events, replies,
results and retained snapshot, and whether the broker is there at all."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from agent.contract import Topics

from ..fleet.mqtt import Subscriber
from ..fleet.serve import DeviceTap
from ..fleet.view import watch_connection
from .board import LEAVES, Board

_QOS = {"telemetry": 0, "results": 0}
TAPPED = ("status", "telemetry")  # what serve's DeviceTap hands on


class Feed:
    """Subscribes the console's own client (QoS 1; telemetry and results QoS 0) and hands each
    message to the Board with its retain flag. It adds per-filter message callbacks and wraps
    the connect/disconnect handlers the client has, so that nothing else it does is overridden."""

    def __init__(
        self, client: mqtt.Client, board: Board, topics: Topics, tap: DeviceTap | None = None
    ):
        """With ``tap`` (serve's one subscription to every status and telemetry), the Feed
        subscribes only to the rest: a second copy of all telemetry would cost more CPU than
        the whole console."""
        self._client, self._board, self._tap = client, board, tap
        leaves = [leaf for leaf in LEAVES if tap is None or leaf not in TAPPED]
        # Telemetry and results at QoS 0: both come again within seconds, and at a thousand
        # devices the acknowledgements of QoS 1 cost the console more than the folding does.
        self._filters = [(topics.all_devices(leaf), _QOS.get(leaf, 1)) for leaf in leaves]

    def start(self) -> Feed:
        """Subscribes and waits for the SUBACK; BrokerUnavailable if refused or unanswered."""
        for topic_filter, _qos in self._filters:
            self._client.message_callback_add(topic_filter, self._on_message)
        watch_connection(self._client, self._connection)
        Subscriber(self._client).subscribe(self._filters)
        if self._client.is_connected():  # connected before: its CONNACK came before the watch
            self._board.broker(True)
        if self._tap is not None:
            self._tap.listen(self._board.take)
        return self

    def stop(self) -> None:
        for topic_filter, _qos in self._filters:
            self._client.message_callback_remove(topic_filter)

    def _connection(self, connected: bool, detail: str | None) -> None:
        why = None if connected else f"disconnected: {detail or 'no reason given'}"
        self._board.broker(connected, why)
        if connected:
            # A clean session forgets subscriptions: ask again (the broker re-sends retained).
            self._client.subscribe(self._filters)

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self._board.take(message.topic, bytes(message.payload), bool(message.retain))
