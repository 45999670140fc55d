"""The deployer in-process, for fuzzing its topic handlers: the real ``Deployer`` thread with a real
ModelStore (tmp), TrustStore, ModelSlot serving a real model, and a real MqttLink connected to a
real Mosquitto (so downloads, chunk topics and the child probe are all real). Payloads go in
through ``Deployer.submit`` — the entry paho calls — and every event it reports is kept.

Knowing when a payload has been handled: the deployer's inbox is wrapped so that each time the
thread comes back to it for more, everything it took before has been handled. That is the only
private detail used (``_inbox``: anything with ``put`` and ``get``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hostile import Payload, event_problems

from agent.comms.link import MqttLink
from agent.config import (
    AgentConfig,
    DeployConfig,
    DeviceConfig,
    MqttConfig,
    TrustConfig,
    VideoConfig,
)
from agent.contract import Package, Topics, TrustStore
from agent.delivery.deployer import Deployer
from agent.delivery.store import ModelStore
from agent.inference.pipeline import HealthStats, ModelSlot
from agent.inference.runtime import ModelSession
from compiler.fleet.broker import MosquittoBroker

DEVICE, GROUPS = "cam-1", ("g1",)
TOPICS = Topics()
_RIGS = itertools.count(1)  # client ids: two rigs with one id would throw each other off


class InboxWatch:
    """Wraps the deployer's inbox: counts what is put in and what the thread took; when the
    thread asks for more, all it took before has been handled."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._cond = threading.Condition()
        self.put_count = self.taken = self.handled = 0

    def put(self, *args: Any, **kwargs: Any) -> Any:
        accepted = self._inner.put(*args, **kwargs)
        if accepted is not False:  # a bounded inbox may refuse: then nothing waits
            with self._cond:
                self.put_count += 1
        return accepted

    def get(self, *args: Any, **kwargs: Any) -> Any:
        with self._cond:
            self.handled = self.taken
            self._cond.notify_all()
        item = self._inner.get(*args, **kwargs)  # None or queue.Empty: nothing came
        if item is not None:
            with self._cond:
                self.taken += 1
        return item

    def wait_handled(self, worker: threading.Thread, timeout: float) -> bool:
        """True once everything put in was handled, or the worker died (a dying thread
        notifies nobody, so its liveness is looked at every 0.1 s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.handled < self.put_count and worker.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install(package: Package, state: Path) -> None:
    """The package on disk as an earlier deployment left it (no torch: not device_harness)."""
    store = ModelStore(state)
    files = {}
    for blob, path in package.blobs():
        files[blob.path] = store.partial_path(blob)
        files[blob.path].write_bytes(path.read_bytes())
    store.activate(store.stage(package.manifest, package.envelope, files))


class Crashes:
    """Exceptions that end a thread (threading.excepthook), and errors the boundary logged."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.logged: list[str] = []

    def hook(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        self.threads.append(f"{name}: {args.exc_type.__name__}: {str(args.exc_value)[:200]}")

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and "handling a message" in record.getMessage():
            self.logged.append(record.getMessage()[:200])


@dataclass
class Rig:
    """One deployer, started; ``feed`` a payload, get back what went wrong (empty: nothing)."""

    broker: MosquittoBroker
    cloud: mqtt.Client
    work: Path
    package: Package
    public_key: Path
    fetch_timeout: float = 1.0
    events: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        state = self.work / "state"
        install(self.package, state)
        self.config = AgentConfig(
            device=DeviceConfig(id=DEVICE, groups=GROUPS, state_dir=state),
            mqtt=MqttConfig(host=self.broker.host, port=self.broker.port),
            trust=TrustConfig(public_keys=(self.public_key,)),
            source=VideoConfig(uri=str(self.work / "unused.avi")),
            deploy=DeployConfig(fetch_timeout=self.fetch_timeout, probe_timeout=30, probation_s=0),
        )  # fmt: skip
        self.trust = TrustStore.from_files([self.public_key])
        self.store = ModelStore(state)
        self.models = ModelSlot()
        served = self.store.current(self.trust)
        assert served is not None
        self.models.swap(ModelSession(served.model_path, served.manifest, self.config.runtime))
        status = TOPICS.status(DEVICE)
        self.link = MqttLink(self.config.mqtt, f"fuzz-rig-{next(_RIGS)}", (status, b"offline"),
                             lambda: (status, b"{}"))  # fmt: skip
        self.link.start()
        assert self.link.connected.wait(10), "the rig's link never connected"
        self.deployer = Deployer(
            self.config, self.link, self.trust, self.store, self.models, HealthStats(),
            self.events.append, self.stop,
        )  # fmt: skip
        self.inbox = InboxWatch(self.deployer._inbox)
        self.deployer._inbox = self.inbox
        self.deployer.start()

    @property
    def alive(self) -> bool:
        return self.deployer.is_alive()

    def publish(self, topic: str, data: bytes, retain: bool = True) -> None:
        self.cloud.publish(topic, data, qos=1, retain=retain).wait_for_publish(30)

    def feed(self, payload: Payload, timeout: float = 60) -> list[str]:
        """Hand one payload to the deployer the way the broker would; what went wrong."""
        for topic, data in payload.before:
            self.publish(topic, data)
        if "/blobs/" in payload.topic:  # the fetcher subscribes when it needs a chunk
            self.publish(payload.topic, payload.data)
            return []
        seen = len(self.events)
        self.deployer.submit(payload.topic, payload.data)
        if not self.inbox.wait_handled(self.deployer, timeout):
            return [f"not handled within {timeout:.0f} s"]
        problems = [] if self.alive else ["the deployer thread died"]
        for event in self.events[seen:]:
            problems += event_problems(event, payload.data)
        return problems

    def close(self) -> None:
        self.stop.set()
        self.link.stop()
