"""Sends the outbox upstream: results batched into QoS 1 messages, a window of them in flight,
each batch deleted from the outbox only when the broker acknowledges it.

Batching is what lets a stock Mosquitto keep up: one message per result at QoS 1 costs a round
trip each and overflows the broker's per-client queue (1000 by default) when a consumer lags;
whatever accumulated while the window was full goes out as one message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from .link import MqttLink
from .outbox import Outbox

log = logging.getLogger(__name__)


class ResultsUplink(threading.Thread):
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        topic: str,
        stop: threading.Event,
        batch_max: int = 500,
        window: int = 8,
    ):
        super().__init__(name="uplink", daemon=True)
        self._outbox, self._link, self._topic, self._halt = outbox, link, topic, stop
        self._batch_max, self._window = batch_max, window
        self._acks: queue.Queue[int] = queue.Queue()
        self._in_flight: dict[int, tuple[int, int]] = {}  # mid → (first seq, last seq)
        self._sent_up_to = 0
        self._epoch = -1
        self.batches = 0
        link.on_ack(self._acks.put)

    def run(self) -> None:
        while not self._halt.is_set():
            self._step()

    def flush(self, timeout: float) -> bool:
        """Send until the outbox is empty (used at shutdown); True when it is."""
        deadline = time.monotonic() + timeout
        while self._outbox.queued and time.monotonic() < deadline and self._link.connected.is_set():
            self._step()
        return self._outbox.queued == 0

    def _step(self) -> None:
        if not self._link.connected.wait(0.2):
            return
        if self._link.epoch != self._epoch:
            # A new connection: whatever was in flight may be lost; send it again from the outbox.
            self._epoch, self._sent_up_to = self._link.epoch, 0
            self._in_flight.clear()
        self._drain_acks(wait=len(self._in_flight) >= self._window)
        if len(self._in_flight) >= self._window:
            return
        rows = self._outbox.peek(self._sent_up_to, self._batch_max)
        if not rows:
            self._outbox.wait_for_more(self._sent_up_to, 0.05)
            self._drain_acks(wait=False)
            return
        payload = b"[" + b",".join(p for _, p in rows) + b"]"
        info = self._link.publish(self._topic, payload, qos=1)
        self._in_flight[info.mid] = (rows[0][0], rows[-1][0])
        self._sent_up_to = rows[-1][0]
        self.batches += 1

    def _drain_acks(self, wait: bool) -> None:
        try:
            mid = self._acks.get(timeout=0.1) if wait else self._acks.get_nowait()
            while True:
                span = self._in_flight.pop(mid, None)
                if span is not None:
                    self._outbox.acknowledge(*span)
                mid = self._acks.get_nowait()
        except queue.Empty:
            pass
