"""Answers devices' chunk requests (delivery "request"): ``devices/{id}/wants`` in, each chunk
on ``devices/{id}/inbox/{sha256}/{i}`` out, QoS 1, not retained, read from a BlobStore.

One thread sends. Requests wait in one queue per device and the sender takes a few chunks from
each device in turn, so a device asking for a large model cannot starve the others; a device
has at most ``per_device`` chunks queued (the rest are dropped and counted: it asks again). At
most ``window`` chunks await the broker's PUBACK at once. A request that does not decode, names
a blob the store does not hold or a chunk the blob does not have is counted and logged once per
device, never fatal.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass

import paho.mqtt.client as mqtt

from agent.contract import ChunkRequest, ContractError, Topics

from .blobstore import BlobStore
from .mqtt import Subscriber, capabilities

log = logging.getLogger(__name__)

# Requests are read at QoS 0: a device asks again for what does not come, and a QoS 1
# subscription is broker state that a NATS cluster losing a node can leave silent.
WANTS_QOS = 0

WINDOW = 64  # chunks awaiting PUBACK at once
PER_DEVICE = 1024  # chunks queued for one device (the agent's largest chunk window)
QUANTUM = 8  # chunks sent to one device before the next device's turn
SHARE_GROUP = "edgewise-serve"


@dataclass
class ServeCounters:
    requests: int = 0
    chunks: int = 0
    bytes: int = 0
    bad_requests: int = 0
    unknown_blobs: int = 0
    bad_chunks: int = 0  # an index past the end of the blob
    dropped: int = 0  # over a device's queue limit

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ChunkServer:
    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        store: BlobStore,
        *,
        shared: bool = False,
        window: int = WINDOW,
        per_device: int = PER_DEVICE,
    ):
        self._client, self._topics, self._store = client, topics, store
        self._window = threading.Semaphore(window)
        self._per_device = per_device
        self._queues: OrderedDict[str, deque[tuple[str, int]]] = OrderedDict()
        self._queued: set[tuple[str, str, int]] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._warned: set[tuple[str, str]] = set()
        self.counters = ServeCounters()
        self._filter = self._wants_filter(shared)
        self._thread = threading.Thread(target=self._run, name="chunks", daemon=True)

    def _wants_filter(self, shared: bool) -> str:
        plain = self._topics.all_devices("wants")
        if not shared:
            return plain
        if not capabilities(self._client).shared_subscription_available:
            log.warning("the broker offers no shared subscriptions; answering every request here")
            return plain
        return f"$share/{SHARE_GROUP}/{plain}"

    @property
    def subscription(self) -> str:
        return self._filter

    def start(self) -> ChunkServer:
        """Subscribes (again after every reconnect) and starts the sending thread."""
        self._client.message_callback_add(self._topics.all_devices("wants"), self._on_wants)
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_reconnect
        Subscriber(self._client).subscribe([(self._filter, WANTS_QOS)])
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def queued(self) -> int:
        with self._cond:
            return len(self._queued)

    # --- paho's thread --------------------------------------------------------------------------

    def _on_reconnect(
        self, client: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(self._filter, WANTS_QOS)])

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, _r: object, _p: object) -> None:
        self._window.release()

    def _on_wants(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            device = self._topics.device_of(message.topic)
            request = ChunkRequest.decode(bytes(message.payload))
        except (ValueError, ContractError) as exc:
            self.counters.bad_requests += 1
            self._warn_once(message.topic, "bad", f"{message.topic}: ignored: {exc}")
            return
        self.counters.requests += 1
        spec = self._store.spec(request.sha256)
        if spec is None:
            self.counters.unknown_blobs += 1
            self._warn_once(
                device, request.sha256, f"{device} wants blob {request.sha256}, not in the store"
            )
            return
        wanted = [i for i in dict.fromkeys(request.chunks) if i < len(spec.chunks)]
        if len(wanted) < len(set(request.chunks)):
            self.counters.bad_chunks += len(set(request.chunks)) - len(wanted)
            self._warn_once(
                device, "index", f"{device} wants chunks past the end of blob {spec.sha256}"
            )
        self._enqueue(device, request.sha256, wanted)

    def _enqueue(self, device: str, sha256: str, indices: list[int]) -> None:
        with self._cond:
            queue = self._queues.setdefault(device, deque())
            for index in indices:
                key = (device, sha256, index)
                if key in self._queued:
                    continue  # asked again before it was sent: once is enough
                if len(queue) >= self._per_device:
                    self.counters.dropped += 1
                    continue
                queue.append((sha256, index))
                self._queued.add(key)
            if not queue:
                self._queues.pop(device, None)
            self._cond.notify()

    def _warn_once(self, who: str, what: str, line: str) -> None:
        if (who, what) in self._warned:
            log.debug("%s", line)
            return
        if len(self._warned) < 10_000:
            self._warned.add((who, what))
        log.warning("%s", line)

    # --- the sending thread ---------------------------------------------------------------------

    def _run(self) -> None:
        qos = capabilities(self._client).qos(1)
        while not self._stop.is_set():
            turn = self._next_turn()
            for device, sha256, index in turn:
                if not self._send(device, sha256, index, qos):
                    return

    def _next_turn(self) -> list[tuple[str, str, int]]:
        """Up to QUANTUM chunks of the device whose turn it is (it then goes to the back)."""
        with self._cond:
            while not self._queues:
                if self._stop.is_set():
                    return []
                self._cond.wait(0.5)
            device, queue = next(iter(self._queues.items()))
            turn: list[tuple[str, str, int]] = []
            while queue and len(turn) < QUANTUM:
                sha256, index = queue.popleft()
                self._queued.discard((device, sha256, index))
                turn.append((device, sha256, index))
            if queue:
                self._queues.move_to_end(device)
            else:
                del self._queues[device]
            return turn

    def _send(self, device: str, sha256: str, index: int, qos: int) -> bool:
        """False when stopping."""
        chunk = self._store.read_chunk(sha256, index)
        if chunk is None:  # the store lost it since the request came
            self.counters.unknown_blobs += 1
            return True
        while not self._window.acquire(timeout=0.5):
            if self._stop.is_set():
                return False
        topic = self._topics.inbox_chunk(device, sha256, index)
        info = self._client.publish(topic, chunk, qos=qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            self._window.release()
            log.warning("cannot send %s: %s", topic, mqtt.error_string(info.rc))
            return True
        self.counters.chunks += 1
        self.counters.bytes += len(chunk)
        return True
