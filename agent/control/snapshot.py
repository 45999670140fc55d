"""The ``snapshot`` command's work: the frame inferred last, as JPEG, sent in chunks.

Chunks go on ``devices/{id}/snapshots/{command_id}/{index}`` at QoS 1 before the ``done`` reply
that describes them (:class:`agent.contract.snapshot.Snapshot`), so a cloud tool that has the
reply can tell a complete picture from a broken one. The same JPEG is kept retained on
``devices/{id}/snapshot`` when it fits one message: Home Assistant's image entity shows it.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.comms.link import MqttLink
from agent.comms.sizing import payload_budget
from agent.contract import Topics
from agent.contract.snapshot import MAX_SNAPSHOT_BYTES, Snapshot, describe, split
from agent.errors import AgentError

CHUNK_BYTES = 128 * 1024  # a 640×480 JPEG in one or two messages; a 4K one in ~15


class SnapshotFailed(AgentError):
    """No picture to send: no frame yet, a frame that is not an image, or the link is down."""


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """A BGR or gray uint8 frame as JPEG; SnapshotFailed for a sensor window."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise SnapshotFailed(
            f"the source gives {image.dtype} samples of shape {image.shape}, not pictures"
        )
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SnapshotFailed("the frame cannot be encoded as JPEG")
    jpeg = encoded.tobytes()
    if len(jpeg) > MAX_SNAPSHOT_BYTES:
        raise SnapshotFailed(f"a {len(jpeg)}-byte JPEG is over {MAX_SNAPSHOT_BYTES} bytes")
    return jpeg


def upload(
    link: MqttLink, topics: Topics, device: str, command_id: str, image: np.ndarray, quality: int
) -> Snapshot:
    """Send ``image`` as JPEG chunks; the Snapshot the ``done`` reply carries."""
    jpeg = encode_jpeg(image, quality)
    last = topics.snapshot_chunk(device, command_id, 9999)  # the longest index topic allowed
    size = min(CHUNK_BYTES, payload_budget(last, link.max_packet))
    height, width = image.shape[:2]
    snapshot = describe(jpeg, size, width, height)
    for index, chunk in enumerate(split(jpeg, size)):
        if not link.publish_bytes(topics.snapshot_chunk(device, command_id, index), chunk):
            raise SnapshotFailed(f"the link went down after {index} of {snapshot.chunks} chunks")
    # Best effort: a picture over one message is still in the chunks, just not in HA.
    link.publish_bytes(topics.snapshot(device), jpeg, retain=True)
    return snapshot
