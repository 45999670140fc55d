"""The rollouts job of ``edgewise serve``: one thread, its own MQTT connection, the store.

It listens to every device's retained status and telemetry (who is online, in which groups,
their last deployment step), their events and their command replies. Every ``interval`` seconds,
or as soon as a message came, it steps each rollout that is not finished and whose lease it
holds (``driver.Driver``): a lease in the database, renewed while held, so two controllers never
drive one rollout, and a stopped one's rollouts are taken over once its lease expires (at once
when it stopped cleanly and released them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.contract import Delivery, Package, Topics, read_package

from ..errors import InputError
from ..fleet.command import new_command, signed
from ..fleet.mqtt import Subscriber
from ..fleet.push import _confirm, deployment_envelope, publish_blobs
from ..fleet.serve import DeviceTap, ServeOptions
from .driver import Driver
from .fleet import Fleet
from .plan import RolloutSpec
from .store import RolloutStore, open_store

log = logging.getLogger(__name__)

INTERVAL_S = 0.5  # a rollout is stepped at least this often, and at once on a message
LEASE_TTL_S = 15.0
RETAINED_GRACE_S = 0.5  # the retained statuses arrive right after the SUBACK; wait for them
COMMAND_TTL_S = 120.0  # a rollback may wait for probation to end on the device
SEND_TIMEOUT_S = 30.0


def owner_id() -> str:
    """Who holds a lease: this host and process, and this controller within it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RolloutController:
    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        store: RolloutStore,
        stop: threading.Event,
        *,
        signing_key: Path | None = None,
        command_key: Path | None = None,
        delivery: Delivery = "retained",
        interval: float = INTERVAL_S,
        lease_ttl: float = LEASE_TTL_S,
    ):
        self._client, self._topics, self._store, self._stop = client, topics, store, stop
        self._signing_key, self._command_key, self._delivery = signing_key, command_key, delivery
        self._interval, self._ttl = interval, lease_ttl
        self.owner = owner_id()
        self.fleet = Fleet(topics)
        self.driver = Driver(store, self.fleet, self)
        self._held: dict[str, float] = {}  # rollout id -> monotonic time of the last renewal
        self._settled: set[str] = set()  # finished rollouts this job no longer looks at
        self._packages: dict[str, Package] = {}
        self._published: set[str] = set()  # packages whose chunks are on the broker already
        self.steps = 0
        self.driven: set[str] = set()  # every rollout this controller has stepped
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)

    def start(self) -> RolloutController:
        self._client.on_message = self.fleet.on_message
        self._client.on_connect = self._on_reconnect
        Subscriber(self._client).subscribe(self.fleet.filters())
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Until the thread ended; it released its leases on the way out."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        self._store.close()

    def held(self) -> set[str]:
        return set(self._held)

    def _on_reconnect(
        self, client: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.fleet.filters())

    def _run(self) -> None:
        self._stop.wait(RETAINED_GRACE_S)
        while not self._stop.is_set():
            messages = self.fleet.drain()
            try:
                self._tick(messages)
            except Exception:  # a database or broker failure: logged, tried again next tick
                log.exception("rollouts: a step failed; trying again")
            self.fleet.changed.wait(self._interval)
            self.fleet.changed.clear()
        for rollout_id in list(self._held):
            try:
                self._store.release(rollout_id, self.owner)
            except Exception:  # stopping anyway; the lease expires by itself
                log.warning("rollouts: could not release the lease of %s", rollout_id)
        self._held.clear()

    def _tick(self, messages: list[Any]) -> None:
        for rollout in self._store.list():
            rollout_id = rollout.spec.id
            if rollout_id in self._settled or self._stop.is_set():
                continue
            if rollout.state == "done":
                self._settle(rollout_id)
                continue
            if not self._lease(rollout_id):
                continue
            # Read again under the lease: the listing may predate another controller's last step.
            fresh = self._store.get(rollout_id)
            if fresh is None or fresh.state == "done":
                self._settle(rollout_id)
                continue
            self.steps += 1
            self.driven.add(rollout_id)
            if not self.driver.step(fresh, messages):
                self._settle(rollout_id)

    def _lease(self, rollout_id: str) -> bool:
        now = time.monotonic()
        renewed = self._held.get(rollout_id)
        if renewed is not None and now - renewed < self._ttl / 3:
            return True
        if self._store.acquire(rollout_id, self.owner, self._ttl):
            if renewed is None:
                log.info("rollouts: driving %s", rollout_id)
            self._held[rollout_id] = now
            return True
        self._held.pop(rollout_id, None)
        return False

    def _settle(self, rollout_id: str) -> None:
        self._settled.add(rollout_id)
        if self._held.pop(rollout_id, None) is not None:
            self._store.release(rollout_id, self.owner)

    # --- Actions: what the driver says to the devices ------------------------------------------

    def _package(self, spec: RolloutSpec) -> Package:
        package = self._packages.get(spec.package)
        if package is None:
            try:
                package = read_package(Path(spec.package))
            except Exception as exc:  # a missing folder or a bad manifest: the device fails
                raise InputError(f"cannot read the package {spec.package}: {exc}") from exc
            self._packages[spec.package] = package
        return package

    def push(self, spec: RolloutSpec, device: str) -> None:
        """The package's chunks once per controller (they are retained and shared by every
        device), then a manifest bound to this one device on its own deploy topic."""
        package = self._package(spec)
        target = f"device:{device}"
        envelope = deployment_envelope(
            package,
            target,
            self._signing_key,
            delivery=self._delivery,
            shadow=spec.criteria.agreement is not None,
        )
        if self._delivery == "retained" and spec.package not in self._published:
            publish_blobs(self._client, self._topics, package, SEND_TIMEOUT_S)
            self._published.add(spec.package)
        info = self._client.publish(self._topics.deploy(target), envelope, qos=1, retain=True)
        _confirm(info, f"the manifest for {device}", SEND_TIMEOUT_S)

    def command(self, device: str, cmd: str, args: dict[str, Any]) -> str:
        """A signed command to one device; its id (the replies carry it)."""
        if self._command_key is None:
            raise InputError("no command key (edgewise serve --command-key)")
        command = new_command(cmd, args, f"device:{device}", COMMAND_TTL_S)
        envelope = signed(command, self._command_key)
        info = self._client.publish(self._topics.commands(command.target), envelope, qos=1)
        _confirm(info, f"the {cmd} command to {device}", SEND_TIMEOUT_S)
        return command.id

    def withdraw(self, device: str) -> None:
        """Clear the device's retained manifest: a returning device no longer finds it."""
        topic = self._topics.deploy(f"device:{device}")
        _confirm(self._client.publish(topic, b"", qos=1, retain=True), topic, SEND_TIMEOUT_S)


def rollouts_job(
    client: mqtt.Client, options: ServeOptions, stop: threading.Event, _tap: DeviceTap
) -> RolloutController:
    """The ``rollouts`` job of a Service: its own store on ``options.db``, closed with it. It
    keeps its own subscriptions (it needs devices' events as well, in order with their status)."""
    if options.db is None:
        raise InputError("the rollouts job needs a database (edgewise serve --db)")
    store = open_store(options.db)
    try:
        return RolloutController(
            client,
            options.topics,
            store,
            stop,
            signing_key=options.signing_key,
            command_key=options.command_key,
        ).start()
    except BaseException:
        store.close()
        raise


def with_rollouts(options: ServeOptions) -> ServeOptions:
    """``options`` with the rollouts job added when it names a database (``--db``)."""
    if options.db is not None:
        options.jobs["rollouts"] = rollouts_job
    return options
