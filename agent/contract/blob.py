"""A model file as it travels: fixed-size chunks, each with its own sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from agent.contract.manifest import DEFAULT_CHUNK_SIZE, BlobSpec


def iter_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def describe_blob(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobSpec:
    """Size, sha256 and per-chunk sha256 of a model file, as the manifest records them."""
    whole = hashlib.sha256()
    chunks = []
    size = 0
    for chunk in iter_chunks(path, chunk_size):
        whole.update(chunk)
        chunks.append(hashlib.sha256(chunk).hexdigest())
        size += len(chunk)
    return BlobSpec(
        path=Path(path).name,
        sha256=whole.hexdigest(),
        size=size,
        chunk_size=chunk_size,
        chunks=tuple(chunks),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in iter_chunks(path, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
