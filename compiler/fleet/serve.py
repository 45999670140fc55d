"""``edgewise serve``: the cloud daemon. It answers devices' chunk requests from a blob store
(delivery "request") and keeps the retained fleet summary on ``{root}/v1/fleet/state``.

A small service: ``start()`` connects and starts its threads, ``stop()`` sets the one stop
event and joins them. Each job has its own thread and its own MQTT connection: ``chunks`` (see
chunkserver) and ``fleet-state`` (publishes the summary every ``interval`` seconds when it
changed), and any further jobs ``ServeOptions.jobs`` names: ``rollouts`` (added by
compiler.rollout.controller.with_rollouts when ``db`` is set) drives the rollouts. They are
plugged in rather than imported here, so that this package stays below the ones that use it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt

from agent.contract import Topics

from .blobstore import BlobStore
from .chunkserver import ChunkServer, ServeCounters
from .mqtt import BrokerAddress, Subscriber, capabilities, connect, disconnect
from .state import FleetState

log = logging.getLogger(__name__)

STATE_INTERVAL = 2.0


# (topic, payload, retained): one device status or telemetry message, as received
Listener = Callable[[str, bytes, bool], None]


class DeviceTap:
    """Every device's status and telemetry as the ``fleet-state`` job receives them, handed on
    to the jobs that listen: one subscription for the service, not one per job (at a thousand
    devices, paho alone spends ~10% of a core per connection that receives all telemetry). A
    listener added late first gets the latest message of every topic, in the order a broker
    would replay its retained ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # delivery and replay in one order: no older overwrites
        self._latest: dict[str, tuple[bytes, bool]] = {}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        with self._lock:
            for topic, (payload, retained) in self._latest.items():
                self._call(listener, topic, payload, retained)
            self._listeners.append(listener)

    def deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            if payload:
                self._latest[topic] = (payload, retained)
            else:
                self._latest.pop(topic, None)
            for listener in self._listeners:
                self._call(listener, topic, payload, retained)

    @staticmethod
    def _call(listener: Listener, topic: str, payload: bytes, retained: bool) -> None:
        try:
            listener(topic, payload, retained)
        except Exception:  # one listener's bug must not stop the fleet state or the others
            log.exception("a device-message listener failed on %s", topic)


class StatePublisher:
    """Folds every device's status and telemetry into a FleetState and publishes it, retained,
    when it changed since the last publish (at most once per ``interval``)."""

    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        interval: float,
        stop: threading.Event,
        tap: DeviceTap | None = None,
    ):
        self._client, self._topics, self._interval, self._stop = client, topics, interval, stop
        self.state = FleetState(topics)
        self.tap = tap or DeviceTap()
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="fleet-state", daemon=True)
        # Telemetry at QoS 0: it comes again every interval, and a thousand devices' PUBACKs
        # cost more than folding their figures.
        self._filters = [(topics.all_devices("status"), 1), (topics.all_devices("telemetry"), 0)]

    def start(self) -> StatePublisher:
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_reconnect
        Subscriber(self._client).subscribe(self._filters)
        self._thread.start()
        return self

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        self.state.update(message.topic, payload)
        self.tap.deliver(message.topic, payload, bool(message.retain))

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _on_reconnect(
        self, client: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self._filters)

    def _run(self) -> None:
        sent = -1
        qos = capabilities(self._client).qos(1)
        while not self._stop.wait(self._interval):
            version = self.state.version
            if version == sent:
                continue
            info = self._client.publish(
                self._topics.fleet_state(), self.state.encode(), qos=qos, retain=True
            )
            if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # queued till back
                sent = version
                self.published += 1


class Job(Protocol):
    """A further job: started by its factory, stopped by the service's stop event."""

    def join(self, timeout: float) -> None:
        """Until its thread ended (after the stop event was set)."""

    def close(self) -> None:
        """Release what it holds (a database), once its thread ended and MQTT disconnected."""


# (its own MQTT connection, the options, the service's stop event, every device's status and
# telemetry as the fleet-state job receives them) -> the started job
JobFactory = Callable[[mqtt.Client, "ServeOptions", threading.Event, DeviceTap], Job]


@dataclass
class ServeOptions:
    blobs: Path
    topics: Topics = field(default_factory=Topics)
    shared: bool = False
    state_interval: float = STATE_INTERVAL
    # Rollouts: their database (a SQLite path or postgresql://...; None: no rollouts job), the
    # key that re-signs each device's manifest, the key that signs rollback and promote commands.
    db: str | None = None
    signing_key: Path | None = None
    command_key: Path | None = None
    jobs: dict[str, JobFactory] = field(default_factory=dict)  # name -> factory, in order


class Service:
    """``edgewise serve`` as an object: tests and later jobs start and stop it in-process."""

    def __init__(self, address: BrokerAddress, options: ServeOptions):
        self._address, self._options = address, options
        self.store = BlobStore(options.blobs)
        self.stopping = threading.Event()
        self._clients: list[mqtt.Client] = []
        self._chunks: ChunkServer | None = None
        self._state: StatePublisher | None = None
        self.tap = DeviceTap()
        self.jobs: dict[str, Job] = {}

    @property
    def counters(self) -> ServeCounters:
        return self._chunks.counters if self._chunks is not None else ServeCounters()

    @property
    def state(self) -> FleetState | None:
        return self._state.state if self._state is not None else None

    @property
    def subscription(self) -> str:
        return self._chunks.subscription if self._chunks is not None else ""

    def start(self) -> Service:
        """Connects both jobs; BrokerUnavailable (and nothing left running) if one cannot."""
        self.store.prepare()
        try:
            chunks = self._connect("chunks")
            self._chunks = ChunkServer(
                chunks, self._options.topics, self.store, shared=self._options.shared
            ).start()
            state = self._connect("state")
            self._state = StatePublisher(
                state, self._options.topics, self._options.state_interval, self.stopping, self.tap
            ).start()
            for name, factory in self._options.jobs.items():
                client = self._connect(name)
                self.jobs[name] = factory(client, self._options, self.stopping, self.tap)
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self, job: str) -> mqtt.Client:
        client = connect(self._address, client_id=f"edgewise-serve-{job}-{uuid.uuid4().hex[:8]}")
        self._clients.append(client)
        return client

    def wait(self, timeout: float | None = None) -> bool:
        """Until ``stop()`` (True) or ``timeout`` (False)."""
        return self.stopping.wait(timeout)

    def stop(self) -> None:
        """Sets the stop event, joins the threads, then disconnects; safe to call twice."""
        self.stopping.set()
        if self._chunks is not None:
            self._chunks.stop()
        if self._state is not None:
            self._state.join(10.0)
        for job in self.jobs.values():
            job.join(30.0)
        for client in self._clients:
            disconnect(client)
        self._clients.clear()
        self.store.close()
        for job in self.jobs.values():
            job.close()
        self.jobs.clear()

    def summary(self) -> str:
        c = self.counters
        return (
            f"served {c.chunks} chunks ({c.bytes / 1e6:.1f} MB) for {c.requests} requests; "
            f"{c.bad_requests} bad requests, {c.unknown_blobs} for unknown blobs, "
            f"{c.bad_chunks} chunks past a blob's end, {c.dropped} over a device's queue"
        )
