"""``edgewise gc``: clear the retained chunks no retained deploy manifest references.

It subscribes to every deploy topic and every chunk topic, then publishes a marker to a topic of
its own: the broker sends a subscription's retained messages when it takes the SUBSCRIBE, and a
client's messages in order, so once the marker is back every retained message has arrived. A
chunk is cleared by publishing an empty retained message on its topic. Manifests are read, not
verified: a manifest devices would refuse still keeps its chunks (the cautious side).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from agent.contract import ContractError, Manifest, Topics, open_envelope

from ..errors import BrokerUnavailable
from .mqtt import Subscriber
from .push import WINDOW, _confirm

log = logging.getLogger(__name__)


@dataclass
class Inventory:
    """What the broker retains: deploy manifests by topic, chunk topics by blob."""

    manifests: dict[str, Manifest | None] = field(default_factory=dict)  # None: unreadable
    chunks: dict[str, set[str]] = field(default_factory=dict)

    def referenced(self, ignoring: frozenset[str] = frozenset()) -> set[str]:
        """sha256 of every blob a manifest (but those on ``ignoring`` topics) names."""
        return {
            blob.sha256
            for topic, manifest in self.manifests.items()
            if manifest is not None and topic not in ignoring
            for blob in manifest.blobs
        }


@dataclass(frozen=True)
class GcResult:
    removed_topics: int
    removed_blobs: int
    kept_blobs: int
    dry_run: bool = False

    def line(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {self.removed_topics} chunk topics of {self.removed_blobs} blobs; "
            f"kept {self.kept_blobs} blobs in use"
        )


def collect(client: mqtt.Client, topics: Topics, timeout: float = 30.0) -> Inventory:
    """Every retained deploy manifest and chunk topic under ``topics.root``."""
    inventory, done = Inventory(), threading.Event()
    deploy_filter = topics.all_deploys()
    marker = topics.marker(uuid.uuid4().hex)

    def on_deploy(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if not payload:
            inventory.manifests.pop(message.topic, None)
            return
        inventory.manifests[message.topic] = _manifest(message.topic, payload)

    def on_chunk(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        sha256 = message.topic.split("/")[-2]
        topics_of = inventory.chunks.setdefault(sha256, set())
        if message.payload:
            topics_of.add(message.topic)
        else:
            topics_of.discard(message.topic)

    filters = [(deploy_filter, 1), (topics.all_blobs(), 1), (marker, 1)]
    client.message_callback_add(deploy_filter, on_deploy)
    client.message_callback_add(topics.all_blobs(), on_chunk)
    client.message_callback_add(marker, lambda _c, _u, _m: done.set())
    try:
        try:
            Subscriber(client).subscribe(filters, timeout)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(
                f"{exc}; NATS 2.9 never confirms a subscription whose retained messages pass "
                "~64 MB, so gc cannot read a larger retained set there: use --chunks request"
            ) from exc
        client.publish(marker, b"end of retained", qos=1)
        if not done.wait(timeout):
            raise BrokerUnavailable(f"the broker did not return gc's marker within {timeout:g} s")
    finally:
        client.unsubscribe([f for f, _ in filters])
        for topic_filter, _ in filters:
            client.message_callback_remove(topic_filter)
    inventory.chunks = {sha: found for sha, found in inventory.chunks.items() if found}
    return inventory


def _manifest(topic: str, payload: bytes) -> Manifest | None:
    try:
        return Manifest.from_dict(open_envelope(payload).manifest_body())
    except (ContractError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not a readable manifest (%s); its chunks cannot be told apart", topic, exc)
        return None


def sweep(
    client: mqtt.Client,
    inventory: Inventory,
    *,
    ignoring: frozenset[str] = frozenset(),
    dry_run: bool = False,
    timeout: float = 30.0,
) -> GcResult:
    """Clears the chunks of every blob no manifest references (but those on ``ignoring``)."""
    used = inventory.referenced(ignoring)
    unused = {sha: found for sha, found in inventory.chunks.items() if sha not in used}
    doomed = sorted(topic for found in unused.values() for topic in found)
    if not dry_run:
        clear(client, doomed, timeout)
    kept = sum(1 for sha in inventory.chunks if sha in used)
    return GcResult(len(doomed), len(unused), kept, dry_run)


def clear(client: mqtt.Client, retained: list[str], timeout: float = 30.0) -> None:
    """An empty retained message on each topic, with up to WINDOW awaiting PUBACK."""
    pending: deque[tuple[mqtt.MQTTMessageInfo, str]] = deque()
    for topic in retained:
        pending.append((client.publish(topic, b"", qos=1, retain=True), topic))
        if len(pending) >= WINDOW:
            _confirm(*pending.popleft(), timeout)
    while pending:
        _confirm(*pending.popleft(), timeout)


def run_gc(
    client: mqtt.Client, topics: Topics, dry_run: bool = False, timeout: float = 30.0
) -> GcResult:
    return sweep(client, collect(client, topics, timeout), dry_run=dry_run, timeout=timeout)
