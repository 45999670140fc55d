"""``edgewise push``: publish a package's chunks, then its signed manifest, to a target."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.contract import Topics, iter_chunks, load_private_key, sign_manifest

from .errors import PushError
from .package import Package

log = logging.getLogger(__name__)

WINDOW = 64  # chunks awaiting the broker's PUBACK at once


def _confirm(info: mqtt.MQTTMessageInfo, what: str, timeout: float) -> None:
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise PushError(f"broker did not acknowledge {what} within {timeout} s")


def deployment_envelope(
    package: Package, target: str, signing_key: Path | None, rollback: bool = False
) -> bytes:
    """The package's envelope as compiled (valid for any target), or re-signed so that it is
    bound to ``target`` — and, with ``rollback``, allowed to replace a newer version."""
    if signing_key is None:
        if rollback:
            raise PushError("a rollback must be signed: give --key")
        return package.envelope
    manifest = package.manifest.model_copy(update={"target": target, "rollback": rollback})
    try:
        key = load_private_key(signing_key)
    except (OSError, ValueError) as exc:
        raise PushError(f"signing key {signing_key}: {exc}") from exc
    return sign_manifest(manifest, key)


def publish_blobs(client: mqtt.Client, topics: Topics, package: Package, timeout: float) -> None:
    """Every chunk, retained, QoS 1, with up to WINDOW awaiting acknowledgement."""
    pending: deque[tuple[mqtt.MQTTMessageInfo, str]] = deque()
    for blob, path in package.blobs():
        for index, chunk in enumerate(iter_chunks(path, blob.chunk_size)):
            info = client.publish(topics.blob_chunk(blob.sha256, index), chunk, qos=1, retain=True)
            pending.append((info, f"{path.name} chunk {index}"))
            if len(pending) >= WINDOW:
                _confirm(*pending.popleft(), timeout)
    while pending:
        _confirm(*pending.popleft(), timeout)


def push_package(
    client: mqtt.Client,
    topics: Topics,
    package: Package,
    target: str,
    *,
    signing_key: Path | None = None,
    rollback: bool = False,
    timeout: float = 30.0,
) -> None:
    """Chunks go first, so they are all on the broker when the (retained) manifest lands."""
    envelope = deployment_envelope(package, target, signing_key, rollback)
    publish_blobs(client, topics, package, timeout)
    deploy_topic = topics.deploy(target)
    _confirm(client.publish(deploy_topic, envelope, qos=1, retain=True), "manifest", timeout)
    log.info(
        "pushed %s %s to %s (%d chunks)",
        package.manifest.name, package.manifest.version, deploy_topic,
        sum(len(b.chunks) for b, _ in package.blobs()),
    )  # fmt: skip
