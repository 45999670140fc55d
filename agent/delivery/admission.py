"""Whether a verified manifest may be pursued on this device: its own limits, before a chunk is
asked for. The schema bounds what any manifest may say; these bound what this device takes."""

from __future__ import annotations

import math
from collections.abc import Callable

from agent import __version__
from agent.comms.sizing import payload_budget
from agent.config import DeployConfig
from agent.contract import BlobSpec, Manifest, parse_semver
from agent.delivery.outcomes import Rejected
from agent.delivery.store import blobs_of
from agent.errors import DeployError


def check_admission(manifest: Manifest, deploy: DeployConfig, serving: Manifest | None) -> None:
    """DeployError when this device cannot take the package now (a later config or agent may);
    Rejected when it is a replay of an older version."""
    if parse_semver(__version__) < parse_semver(manifest.min_agent_version):
        raise DeployError(f"needs agent >= {manifest.min_agent_version}, this is {__version__}")
    limit = deploy.max_model_bytes
    for blob in blobs_of(manifest):
        what = "model" if blob is manifest.model else "golden file"
        if blob.size > limit:
            raise DeployError(
                f"{what} is {blob.size} bytes, over the device limit of {limit} "
                "(deploy.max_model_bytes)"
            )
        if len(blob.chunks) > math.ceil(limit / blob.chunk_size):
            raise DeployError(
                f"{what} lists {len(blob.chunks)} chunks, more than {limit} bytes "
                f"(deploy.max_model_bytes) in {blob.chunk_size}-byte chunks can hold"
            )
    if serving is None or serving.name != manifest.name or manifest.rollback:
        return
    if manifest.semver <= serving.semver:
        raise Rejected(
            f"version {manifest.version} is not newer than serving {serving.version}: "
            "refused as a replay (a signed rollback can name an older version)"
        )


def check_packets(manifest: Manifest, max_packet: int, topic_of: Callable[[BlobSpec], str]) -> None:
    """DeployError when a chunk cannot reach this device over MQTT: the broker drops a packet over
    the cap this device announced (``[mqtt] max_packet_bytes``) or its own, so the transfer would
    only stall until ``fetch_timeout``. ``topic_of(blob)``: the longest topic a chunk comes on."""
    if manifest.delivery == "http":
        return
    for blob in blobs_of(manifest):
        budget = payload_budget(topic_of(blob), max_packet)
        if blob.chunk_size > budget:
            raise DeployError(
                f"{blob.path} comes in {blob.chunk_size}-byte chunks, over the {budget} bytes a "
                f"packet to this device can carry ({max_packet}-byte cap, [mqtt] max_packet_bytes "
                "or the broker's); push it in smaller chunks or raise the cap"
            )
