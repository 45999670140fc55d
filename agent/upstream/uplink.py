"""Sends the outbox upstream: results batched into QoS 1 messages, a window of them in flight,
each batch deleted from the outbox only when the broker acknowledges it.

Batching is what lets a stock Mosquitto keep up: one message per result at QoS 1 costs a round
trip each and overflows the broker's per-client queue (1000 by default) when a consumer lags;
whatever accumulated while the window was full goes out as one message.

A batch is capped by bytes as well as by count: a broker disconnects a client that sends a packet
over its ``max_packet_size``, so a batch over it would be refused after every reconnect and the
outbox would never drain. A stored result too big for a message on its own (stored before the
cap was lowered) is sent cut, flagged ``"truncated": true``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from agent.comms.link import MqttLink
from agent.comms.sizing import fit_result_bytes, payload_budget

log = logging.getLogger(__name__)


class ResultQueue(Protocol):
    """What the uplink needs of the outbox (:class:`agent.upstream.spool.Spool` or a bare
    Outbox)."""

    def peek(
        self, after: int, limit: int, max_bytes: int | None = None
    ) -> list[tuple[int, bytes]]: ...
    def acknowledge(self, first: int, last: int) -> None: ...
    def wait_for_more(self, after: int, timeout: float) -> bool: ...
    @property
    def queued(self) -> int: ...


class ResultsUplink(threading.Thread):
    def __init__(
        self,
        outbox: ResultQueue,
        link: MqttLink,
        topic: str,
        stop: threading.Event,
        batch_max: int = 500,
        window: int = 8,
        housekeeping: Callable[[], None] = lambda: None,
        settle_s: float = 0.0,
    ):
        """``housekeeping`` runs on every pass of the loop (the spool's retry of writes).

        ``settle_s``: how long an acknowledged batch stays in the outbox before it is deleted. A
        cluster node can acknowledge a QoS 1 message and die before the rest of the cluster has
        it; a batch acknowledged within ``settle_s`` of a lost connection is sent again on the
        next one (consumers drop the copy by id). 0 (one broker): deleted on acknowledgement."""
        super().__init__(name="uplink", daemon=True)
        self._outbox, self._link, self._topic, self._halt = outbox, link, topic, stop
        self._batch_max, self._window, self._housekeeping = batch_max, window, housekeeping
        self._acks: queue.Queue[int] = queue.Queue()
        self._in_flight: dict[int, tuple[int, int]] = {}  # mid → (first seq, last seq)
        self._settle_s = settle_s
        self._settling: deque[tuple[float, int, int]] = deque()  # (acked at, first, last)
        self._sent_up_to = 0
        self._epoch = -1
        self.batches = 0
        self.truncated = 0  # stored results sent cut, each too big for a message of its own
        link.on_ack(self._acks.put)

    def run(self) -> None:
        while not self._halt.is_set():
            self._step()

    def flush(self, timeout: float) -> bool:
        """Send until the outbox is empty (used at shutdown); True when it is."""
        deadline = time.monotonic() + timeout
        self._settle_s = 0.0  # stopping: an acknowledgement is final
        while self._outbox.queued and time.monotonic() < deadline and self._link.connected.is_set():
            self._step()
        return self._outbox.queued == 0

    def _step(self) -> None:
        self._housekeeping()
        if not self._link.connected.wait(0.2):
            return
        if self._link.epoch != self._epoch:
            # A new connection: whatever was in flight may be lost, and so may what was settling;
            # send it all again from the outbox.
            self._epoch, self._sent_up_to = self._link.epoch, 0
            self._in_flight.clear()
            self._settling.clear()
        self._drain_acks(wait=len(self._in_flight) >= self._window)
        self._settle()
        if len(self._in_flight) >= self._window:
            return
        budget = payload_budget(self._topic, self._link.max_packet) - 2  # the brackets
        rows = self._outbox.peek(self._sent_up_to, self._batch_max, max_bytes=budget)
        if not rows:
            self._outbox.wait_for_more(self._sent_up_to, 0.05)
            self._drain_acks(wait=False)
            return
        info = self._link.publish_batch(self._topic, self._pack(rows, budget))
        if info is None:
            return  # the cap shrank on a reconnect since the budget was read: pack again
        self._in_flight[info.mid] = (rows[0][0], rows[-1][0])
        self._sent_up_to = rows[-1][0]
        self.batches += 1

    def _pack(self, rows: list[tuple[int, bytes]], budget: int) -> bytes:
        """One JSON array; ``rows`` fit in ``budget`` except a lone result, which is cut."""
        if len(rows) == 1 and len(rows[0][1]) > budget:
            payload, _ = fit_result_bytes(rows[0][1], budget)
            self.truncated += 1
            log.warning("a stored result of %d bytes is over the cap; sent cut", len(rows[0][1]))
            return b"[" + payload + b"]"
        return b"[" + b",".join(p for _, p in rows) + b"]"

    def _drain_acks(self, wait: bool) -> None:
        try:
            mid = self._acks.get(timeout=0.1) if wait else self._acks.get_nowait()
            while True:
                span = self._in_flight.pop(mid, None)
                if span is not None:
                    self._settling.append((time.monotonic(), *span))
                mid = self._acks.get_nowait()
        except queue.Empty:
            pass

    def _settle(self) -> None:
        """Delete the batches acknowledged at least ``settle_s`` ago on this connection."""
        now = time.monotonic()
        while self._settling and now - self._settling[0][0] >= self._settle_s:
            _, first, last = self._settling.popleft()
            self._outbox.acknowledge(first, last)
