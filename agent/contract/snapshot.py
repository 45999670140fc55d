"""A snapshot on the wire: the JPEG a device took for a ``snapshot`` command.

The device publishes the JPEG in chunks on ``devices/{id}/snapshots/{command_id}/{index}`` (QoS 1,
not retained), then its ``done`` reply carries :class:`Snapshot` as ``result["snapshot"]``: size,
chunk count and sha256. The cloud puts the chunks together with :func:`assemble` and checks them
against it, so a lost, repeated or altered chunk is named rather than saved as a broken picture.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.errors import ContractError

MAX_SNAPSHOT_BYTES = 16 * 2**20  # a 4K JPEG is ~2 MB; more is not a snapshot


class SnapshotError(ContractError):
    """Chunks that do not make the snapshot their reply describes."""


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0, le=MAX_SNAPSHOT_BYTES)
    chunks: int = Field(gt=0, le=4096)
    chunk_bytes: int = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    content_type: str = "image/jpeg"


def split(jpeg: bytes, chunk_bytes: int) -> Iterator[bytes]:
    for start in range(0, len(jpeg), chunk_bytes):
        yield jpeg[start : start + chunk_bytes]


def describe(jpeg: bytes, chunk_bytes: int, width: int, height: int) -> Snapshot:
    return Snapshot(
        sha256=hashlib.sha256(jpeg).hexdigest(),
        bytes=len(jpeg),
        chunks=max(1, -(-len(jpeg) // chunk_bytes)),
        chunk_bytes=chunk_bytes,
        width=width,
        height=height,
    )


def assemble(snapshot: Snapshot, chunks: Mapping[int, bytes]) -> bytes:
    """The JPEG from its chunks by index; SnapshotError naming what is missing or wrong."""
    missing = [i for i in range(snapshot.chunks) if i not in chunks]
    if missing:
        shown = ", ".join(str(i) for i in missing[:5])
        raise SnapshotError(
            f"snapshot incomplete: {len(missing)} of {snapshot.chunks} chunks missing ({shown})"
        )
    jpeg = b"".join(chunks[i] for i in range(snapshot.chunks))
    if len(jpeg) != snapshot.bytes:
        raise SnapshotError(f"snapshot of {len(jpeg)} bytes, its reply says {snapshot.bytes}")
    digest = hashlib.sha256(jpeg).hexdigest()
    if digest != snapshot.sha256:
        raise SnapshotError(f"snapshot sha256 {digest[:12]} does not match {snapshot.sha256[:12]}")
    return jpeg
