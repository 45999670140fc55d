"""Chunks over MQTT, a window at a time: delivery "retained" and "request".

"retained": the cloud publishes chunk ``i`` of a blob retained on ``blobs/{sha256}/{i}``; the
fetcher subscribes to the topics of the chunks it still lacks, a window at a time, and drops each
subscription once its chunk is written — so a chunk is fetched once, and after a broker or agent
restart only the missing chunks are asked for again.

"request": nothing is retained. The fetcher subscribes to its own inbox for the blob
(``devices/{id}/inbox/{sha256}/+``) and publishes a :class:`ChunkRequest` for the window's
chunks on ``devices/{id}/wants``; ``edgewise serve`` answers each on the inbox. The inbox is
subscribed at QoS 0: asking again is what makes the transfer reliable, and a QoS 1 subscription
is state the broker must keep — on a NATS cluster that lost a node, some QoS 1 subscriptions made
on the survivors receive nothing at all, where QoS 0 ones do.

Both ask again for the chunks in flight that have not arrived when nothing arrived for ``[deploy]
request_retry_s`` — "request" with a new request, "retained" by unsubscribing and subscribing
again, which makes the broker deliver the retained message again (a NATS cluster that lost a
node drops the retained message of some fresh subscriptions; any broker can lose one in a
reconnect race). After a reconnect (the link's epoch changed: another node may have taken over)
"request" asks again at once; "retained" does not, since the link has already subscribed afresh
to every topic it holds — asking again would only bring each chunk twice — and gives the new
connection ``request_retry_s`` before it subscribes again.

Bounded on every side: paho's callback keeps only chunks of topics in the open window, at most
one per topic, and none longer than the manifest's chunk size (those are dropped before anything
is queued), so memory holds at most a window of chunks. A chunk asked for again that then comes
twice is written once; a copy after it is written is counted in ``duplicates``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from agent.comms.bounded import Mailbox
from agent.comms.guard import Oversize
from agent.comms.link import MqttLink
from agent.contract import BlobSpec, ChunkRequest, Topics, summarise
from agent.delivery.chunkfile import POLL_S, ChunkFile, FetchStats, Watch, verified
from agent.errors import DeployError

log = logging.getLogger(__name__)

REQUEST_BATCH = 128  # chunk indices per wants message: well under the link's small-message cap


class _Window:
    """The chunk topics asked for, and what paho delivered on them (on paho's thread)."""

    def __init__(self, blob: BlobSpec, size: int, stats: FetchStats):
        self._blob, self._stats = blob, stats
        self._open: set[str] = set()
        self._lock = threading.Lock()
        self.arrived: Mailbox[bytes | Oversize] = Mailbox(max_keys=size)

    def offer(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if topic not in self._open:
                self._stats.duplicates += 1  # a late copy of a chunk already written
                return
        limit = self._blob.chunk_size
        if len(payload) > limit:  # dropped here: never queued
            self.arrived.put(topic, Oversize(len(payload), summarise(payload), limit, "chunk size"))
        else:
            self.arrived.put(topic, payload)

    def open(self, topics: list[str]) -> None:
        with self._lock:
            self._open.update(topics)

    def close(self, topic: str) -> None:
        with self._lock:
            self._open.discard(topic)
        self.arrived.discard(topic)


class Asker(Protocol):
    """How chunks are asked for: subscriptions to retained topics, or requests to a service."""

    route: str  # the filter every answer matches

    def open(self) -> None: ...
    def topic(self, index: int) -> str: ...
    def ask(self, indices: list[int]) -> None: ...
    def again(self, index: int) -> None: ...
    def written(self, index: int) -> None: ...
    def tick(self, stalled: list[int]) -> None: ...  # ask again for these if they stalled
    def online(self) -> bool: ...  # connected to a broker now
    def close(self, in_flight: list[int]) -> None: ...


class _Reasking:
    """The one path that asks again for stalled chunks — those in flight that have not arrived:
    after a reconnect, and when nothing arrived for ``retry_s``. How to ask again is the
    asker's (``_reask``); ``REASK_ON_RECONNECT`` says whether a reconnect alone calls for it."""

    REASK_ON_RECONNECT = True

    def __init__(self, link: MqttLink, retry_s: float):
        self._link, self._retry_s = link, retry_s
        self._epoch = -1  # the connection the chunks in flight were asked for on
        self._last = time.monotonic()  # when we last asked or something came

    def written(self, index: int) -> None:
        self._last = time.monotonic()

    def online(self) -> bool:
        return self._link.connected.is_set()

    def tick(self, stalled: list[int]) -> None:
        if not stalled or not self._link.connected.is_set():
            return
        if self._link.epoch != self._epoch:
            reconnected, self._epoch = self._epoch >= 0, self._link.epoch
            if not self.REASK_ON_RECONNECT:
                self._last = time.monotonic()  # the new connection gets retry_s to deliver
                return
            if reconnected:
                log.info("reconnected: asking again for %d chunks", len(stalled))
        elif time.monotonic() - self._last > self._retry_s:
            log.info("no chunk for %.1f s: asking again for %d", self._retry_s, len(stalled))
        else:
            return
        self._reask(stalled)
        self._last = time.monotonic()

    def _reask(self, indices: list[int]) -> None:
        raise NotImplementedError


class Subscriptions(_Reasking):
    """Delivery "retained": one subscription per chunk in the window, made again for a chunk
    that did not come."""

    # The link subscribes again to every held topic on connecting: a fresh subscription, which
    # brings the retained message. Subscribing once more would bring each chunk twice.
    REASK_ON_RECONNECT = False

    def __init__(self, link: MqttLink, topics: Topics, blob: BlobSpec, retry_s: float):
        super().__init__(link, retry_s)
        self._topics, self._sha256 = topics, blob.sha256
        self.route = topics.blob_chunks(blob.sha256)

    def open(self) -> None:
        """Nothing yet: each chunk's topic is subscribed when it is asked for."""

    def topic(self, index: int) -> str:
        return self._topics.blob_chunk(self._sha256, index)

    def ask(self, indices: list[int]) -> None:
        self._link.hold([self.topic(i) for i in indices])
        self._last = time.monotonic()

    def again(self, index: int) -> None:
        self._reask([index])

    def written(self, index: int) -> None:
        self._link.release([self.topic(index)])
        super().written(index)

    def close(self, in_flight: list[int]) -> None:
        self._link.release([self.topic(i) for i in in_flight])

    def _reask(self, indices: list[int]) -> None:
        """Unsubscribe and subscribe again (a packet each): the broker sends the retained
        message again."""
        topics = [self.topic(i) for i in indices]
        self._link.release(topics)
        self._link.hold(topics)


class Requests(_Reasking):
    """Delivery "request": one inbox subscription, and ChunkRequests on ``wants``."""

    def __init__(self, link: MqttLink, topics: Topics, blob: BlobSpec, device: str, retry_s: float):
        super().__init__(link, retry_s)
        self._topics, self._sha256, self._device = topics, blob.sha256, device
        self._wants = topics.wants(device)
        self.route = topics.inbox_chunks(device, blob.sha256)

    def open(self) -> None:
        self._link.hold([self.route], qos=0)  # subscribed before the first request goes out

    def topic(self, index: int) -> str:
        return self._topics.inbox_chunk(self._device, self._sha256, index)

    def ask(self, indices: list[int]) -> None:
        if self._epoch == self._link.epoch and self._link.connected.is_set():
            self._publish(indices)  # else tick() asks for everything in flight once connected

    def again(self, index: int) -> None:
        self.ask([index])

    def close(self, in_flight: list[int]) -> None:
        self._link.release([self.route])

    def _reask(self, indices: list[int]) -> None:
        # Subscribe afresh too: a subscription the broker lost (a cluster node gone) stays
        # silent however often we ask. One client's packets are handled in order, so the new
        # subscription is in place before the request it precedes is answered.
        self._link.release([self.route])
        self._link.hold([self.route], qos=0)
        self._publish(indices)

    def _publish(self, indices: list[int]) -> None:
        for start in range(0, len(indices), REQUEST_BATCH):
            batch = tuple(indices[start : start + REQUEST_BATCH])
            payload = ChunkRequest(sha256=self._sha256, chunks=batch).encode()
            self._link.publish(self._wants, payload, qos=1)
        self._last = time.monotonic()


class MqttTransfer:
    """One blob's chunks over MQTT: a window of chunks asked for, refilled as chunks are written."""

    def __init__(
        self, blob: BlobSpec, asker: Asker, *, pending: list[int], stats: FetchStats, size: int
    ) -> None:
        self._blob, self._asker, self._stats = blob, asker, stats
        self._pending, self._size = pending, size
        self.window = _Window(blob, size, stats)
        self.in_flight: list[int] = []
        self._failures: dict[int, int] = {}

    def run(self, file: ChunkFile, watch: Watch) -> None:
        self._refill()
        total, remaining = len(self._blob.chunks), len(self._pending) + len(self.in_flight)
        while remaining:
            if not self._asker.online():
                # Time without a broker is not time without a chunk: a cluster that takes 20 s
                # to take the device back must not fail a download that resumes right after.
                watch.progressed()
            watch.check(remaining, total)
            if not len(self.window.arrived):  # none in flight has arrived unwritten
                self._asker.tick(self.in_flight)
            item = self.window.arrived.get(timeout=POLL_S)
            if item is not None and self._write(file, *item):
                remaining -= 1
                watch.progressed()
                self._refill()

    def close(self) -> None:
        self._asker.close(self.in_flight)

    def _write(self, file: ChunkFile, topic: str, payload: bytes | Oversize) -> bool:
        """Write a good chunk and close its topic; ask once more for a bad one (True: written)."""
        index = int(topic.rsplit("/", 1)[1])
        chunk, problem = verified(self._blob, index, payload)
        if chunk is None:
            self._failures[index] = self._failures.get(index, 0) + 1
            if self._failures[index] > 1:
                raise DeployError(f"chunk {index} {problem} twice")
            log.warning("chunk %d %s; asking again", index, problem)
            self._asker.again(index)
            return False
        file.write(index, chunk)
        self.in_flight.remove(index)
        self.window.close(topic)
        self._asker.written(index)
        return True

    def _refill(self) -> None:
        wanted: list[int] = []
        while self._pending and len(self.in_flight) + len(wanted) < self._size:
            wanted.append(self._pending.pop(0))
        if wanted:
            self.in_flight.extend(wanted)
            self.window.open([self._asker.topic(i) for i in wanted])
            self._asker.ask(wanted)
