"""``edgewise push``: publish a package's chunks, then its signed manifest, to a target."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.contract import (
    BlobSpec,
    Delivery,
    Manifest,
    Package,
    Topics,
    iter_chunks,
    load_private_key,
    sign_manifest,
)

from ..errors import PushError

log = logging.getLogger(__name__)

WINDOW = 64  # chunks awaiting the broker's PUBACK at once


def _confirm(info: mqtt.MQTTMessageInfo, what: str, timeout: float) -> None:
    try:
        info.wait_for_publish(timeout)
        published = info.is_published()
    except (RuntimeError, ValueError) as exc:  # paho: not connected any more, queue full
        raise PushError(f"lost the broker while sending {what}: {exc}") from exc
    if not published:
        raise PushError(f"broker did not acknowledge {what} within {timeout} s")


def deployment_envelope(
    package: Package,
    target: str,
    signing_key: Path | None,
    rollback: bool = False,
    *,
    delivery: Delivery = "retained",
    specs: list[BlobSpec] | None = None,
    shadow: bool = False,
) -> bytes:
    """The package's envelope as compiled (valid for any target), or re-signed so that it is
    bound to ``target`` — and, with ``rollback``, allowed to replace a newer version; with
    ``delivery`` and ``specs`` (the blobs re-chunked, or with URLs) the chunks' way and size;
    with ``shadow``, installed beside the serving model and compared with it, not served."""
    blobs = specs if specs is not None else [spec for spec, _ in package.blobs()]
    if signing_key is None:
        if rollback or shadow:
            raise PushError(
                f"a {'rollback' if rollback else 'shadow push'} must be signed: give --key"
            )
        if delivery != package.manifest.delivery or blobs != list(package.manifest.blobs):
            raise PushError("changing how the chunks travel must be signed: give --key")
        return package.envelope
    update: dict[str, object] = {"target": target, "rollback": rollback, "delivery": delivery}
    update["mode"] = "shadow" if shadow else "serve"
    update["model"] = blobs[0]
    if package.manifest.golden is not None:
        update["golden"] = blobs[1]
    manifest = Manifest.from_dict(package.manifest.model_copy(update=update).to_dict())
    try:
        key = load_private_key(signing_key)
    except (OSError, ValueError) as exc:
        raise PushError(f"signing key {signing_key}: {exc}") from exc
    return sign_manifest(manifest, key)


Acked = Callable[[int], None]  # called with a chunk's size once the broker acknowledged it


def publish_blobs(
    client: mqtt.Client,
    topics: Topics,
    package: Package,
    timeout: float,
    on_acked: Acked | None = None,
    specs: list[BlobSpec] | None = None,
) -> None:
    """Every chunk (of ``specs``, by default as compiled), retained, QoS 1, with up to WINDOW
    awaiting acknowledgement."""
    pending: deque[tuple[mqtt.MQTTMessageInfo, str, int]] = deque()

    def confirm_oldest() -> None:
        info, what, size = pending.popleft()
        _confirm(info, what, timeout)
        if on_acked is not None:
            on_acked(size)

    paths = [path for _, path in package.blobs()]
    blobs = specs if specs is not None else [spec for spec, _ in package.blobs()]
    for blob, path in zip(blobs, paths, strict=True):
        for index, chunk in enumerate(iter_chunks(path, blob.chunk_size)):
            info = client.publish(topics.blob_chunk(blob.sha256, index), chunk, qos=1, retain=True)
            pending.append((info, f"{path.name} chunk {index}", len(chunk)))
            if len(pending) >= WINDOW:
                confirm_oldest()
    while pending:
        confirm_oldest()


def push_package(
    client: mqtt.Client,
    topics: Topics,
    package: Package,
    target: str,
    *,
    signing_key: Path | None = None,
    rollback: bool = False,
    timeout: float = 30.0,
    on_acked: Acked | None = None,
    delivery: Delivery = "retained",
    specs: list[BlobSpec] | None = None,
    shadow: bool = False,
) -> None:
    """Chunks go first, so they are all on the broker when the (retained) manifest lands. Only
    delivery "retained" publishes them; "request" and "http" devices fetch them elsewhere."""
    envelope = deployment_envelope(
        package, target, signing_key, rollback, delivery=delivery, specs=specs, shadow=shadow
    )
    if delivery == "retained":
        publish_blobs(client, topics, package, timeout, on_acked, specs)
    deploy_topic = topics.deploy(target)
    _confirm(client.publish(deploy_topic, envelope, qos=1, retain=True), "manifest", timeout)
    # The CLI prints its own summary line; this one is for -v and library callers.
    name, version = package.manifest.name, package.manifest.version
    chunks = sum(len(b.chunks) for b, _ in package.blobs()) if delivery == "retained" else 0
    log.debug("pushed %s %s to %s (%d chunks)", name, version, deploy_topic, chunks)
