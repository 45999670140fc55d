"""Pulls a model body as retained, content-addressed chunks and writes them to disk as they come.

The compiler publishes chunk ``i`` of a blob to ``blobs/{sha256}/{i}`` (retained, QoS 1) before it
announces the manifest, so subscribing to ``blobs/{sha256}/+`` delivers every chunk. Each chunk is
checked against its sha256 in the signed manifest before it is written at its offset; memory holds
at most the chunks in flight, never the whole model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from .contract import BlobSpec, Topics
from .errors import DeployError
from .link import MqttLink

log = logging.getLogger(__name__)


class ChunkFetcher:
    def __init__(self, link: MqttLink, topics: Topics, model: BlobSpec):
        self._link, self._topics, self._model = link, topics, model
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def fetch(self, dest: Path, timeout: float, stop: threading.Event) -> Path:
        """Write all chunks into ``dest``; raises DeployError when they do not arrive in time."""
        model = self._model
        missing = set(range(len(model.chunks)))
        deadline = time.monotonic() + timeout
        topic_filter = self._topics.blob_chunks(model.sha256)
        fd = os.open(dest, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, model.size)
            self._link.subscribe(topic_filter, lambda t, p: self._inbox.put((t, p)))
            while missing:
                remaining = deadline - time.monotonic()
                if stop.is_set() or remaining <= 0:
                    raise DeployError(
                        f"timed out with {len(missing)} of {len(model.chunks)} chunks missing"
                    )
                try:
                    topic, payload = self._inbox.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    continue
                index = self._accept(topic, payload)
                if index is not None and index in missing:
                    os.pwrite(fd, payload, index * model.chunk_size)
                    missing.discard(index)
            os.fsync(fd)
        finally:
            os.close(fd)
            self._link.unsubscribe(topic_filter)
        return dest

    def _accept(self, topic: str, payload: bytes) -> int | None:
        try:
            index = int(topic.rsplit("/", 1)[1])
            expected = self._model.chunks[index]
        except (ValueError, IndexError):
            log.warning("ignoring stray chunk topic %s", topic)
            return None
        if hashlib.sha256(payload).hexdigest() != expected:
            log.warning("chunk %d failed its sha256 check; waiting for a good copy", index)
            return None
        return index
