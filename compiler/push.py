"""``edgewise push``: publish a package's chunks, then its signed manifest, to a device."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt

from agent.contract import Topics, iter_chunks

from .errors import PushError
from .package import Package

log = logging.getLogger(__name__)


def _confirm(info: mqtt.MQTTMessageInfo, what: str, timeout: float) -> None:
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise PushError(f"broker did not acknowledge {what} within {timeout} s")


def push_package(
    client: mqtt.Client, topics: Topics, package: Package, device_id: str, timeout: float = 30.0
) -> None:
    """Chunks go first (retained, QoS 1), so they are all on the broker when the manifest lands."""
    model = package.manifest.model
    for blob, path in package.blobs():
        for index, chunk in enumerate(iter_chunks(path, blob.chunk_size)):
            info = client.publish(topics.blob_chunk(blob.sha256, index), chunk, qos=1, retain=True)
            _confirm(info, f"{path.name} chunk {index}", timeout)
    deploy_topic = topics.deploy_device(device_id)
    _confirm(
        client.publish(deploy_topic, package.envelope, qos=1, retain=True), "manifest", timeout
    )
    log.info(
        "pushed %s %s to %s (%d chunks)",
        package.manifest.name, package.manifest.version, deploy_topic, len(model.chunks),
    )  # fmt: skip
