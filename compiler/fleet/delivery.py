"""How a push sends the chunks (``--chunks retained|request|http``) and in what size.

The mode, the URLs and the chunk size are manifest fields, so they are signed: anything but the
package as compiled needs ``--key``. A broker that caps packets below a chunk (MQTT 5 Maximum
Packet Size) gets the blob re-chunked for this push, which re-signs the manifest too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.contract import BlobSpec, Delivery, Package, Topics, describe_blob
from agent.contract.broker import BrokerCapabilities
from agent.contract.manifest import MAX_CHUNKS

from ..errors import InputError

MIN_CHUNK = 1024
# Fixed header (5), packet id (2), topic length (2), MQTT 5 properties (a few) and some slack.
PACKET_OVERHEAD = 64
LONGEST_ID = "x" * 64


@dataclass(frozen=True)
class DeliveryChoice:
    mode: Delivery = "retained"
    url_bases: tuple[str, ...] = ()  # http: each blob at BASE/<sha256>
    store: Path | None = None  # request: the blob store `edgewise serve` reads

    @property
    def publishes_chunks(self) -> bool:
        return self.mode == "retained"


def check_choice(choice: DeliveryChoice, signing_key: Path | None) -> None:
    """Before connecting: InputError (exit 2) for a choice that cannot be pushed as given."""
    if choice.mode != "retained" and signing_key is None:
        raise InputError(
            f"--chunks {choice.mode} is a signed manifest field: give --key to re-sign the package"
        )
    if choice.mode == "http" and not choice.url_bases:
        raise InputError("--chunks http needs at least one --url BASE (blobs at BASE/<sha256>)")
    if choice.mode != "http" and choice.url_bases:
        raise InputError("--url is for --chunks http only")


def packet_overhead(topics: Topics, mode: Delivery) -> int:
    """Bytes a chunk's PUBLISH carries beside the chunk, for the longest topic of ``mode``."""
    sha = "0" * 64
    topic = (
        topics.inbox_chunk(LONGEST_ID, sha, MAX_CHUNKS - 1)
        if mode == "request"
        else topics.blob_chunk(sha, MAX_CHUNKS - 1)
    )
    return len(topic.encode()) + PACKET_OVERHEAD


def plan_blobs(
    package: Package,
    choice: DeliveryChoice,
    caps: BrokerCapabilities,
    topics: Topics,
    signed: bool,
) -> list[BlobSpec]:
    """The package's blobs as this push describes them: re-chunked to fit the broker's packet
    cap, with URLs for http. InputError (exit 2) when that needs a key and there is none."""
    specs = [spec for spec, _ in package.blobs()]
    limit = caps.maximum_packet_size
    if choice.mode != "http" and limit is not None:
        overhead = packet_overhead(topics, choice.mode)
        fits = limit - overhead
        largest = max(spec.chunk_size for spec in specs)
        if largest > fits:
            specs = _rechunk(package, limit, overhead, largest, signed)
    if choice.mode == "http":
        specs = [
            spec.model_copy(
                update={"urls": tuple(_url(base, spec.sha256) for base in choice.url_bases)}
            )
            for spec in specs
        ]
    return specs


def _rechunk(
    package: Package, limit: int, overhead: int, largest: int, signed: bool
) -> list[BlobSpec]:
    if not signed:
        raise InputError(
            f"the broker takes packets of at most {limit} bytes and this package's chunks are "
            f"{largest} bytes (plus {overhead} for the topic); give --key to re-chunk it"
        )
    size = 1 << ((limit - overhead).bit_length() - 1) if limit > overhead else 0
    if size < MIN_CHUNK:
        raise InputError(
            f"the broker takes packets of at most {limit} bytes: too small for chunks of "
            f"{MIN_CHUNK} bytes; use --chunks http"
        )
    specs = []
    for spec, path in package.blobs():
        if spec.chunk_size + overhead <= limit:
            specs.append(spec)
            continue
        try:
            specs.append(describe_blob(path, size))
        except ValueError as exc:  # more than MAX_CHUNKS chunks
            raise InputError(
                f"{spec.path} does not fit in {MAX_CHUNKS} chunks of {size} bytes "
                f"(the broker's packet cap is {limit} bytes); use --chunks http"
            ) from exc
    return specs


def _url(base: str, sha256: str) -> str:
    return f"{base.rstrip('/')}/{sha256}"
