"""Pulls a blob (model or golden inputs) chunk by chunk and writes each to disk as it comes.

The cloud publishes chunk ``i`` of a blob retained on ``blobs/{sha256}/{i}``. The fetcher
subscribes to the individual topics of the chunks it still lacks, a window at a time, and drops
each subscription once its chunk is written — so a chunk is fetched once, memory holds at most a
window of chunks, and after a broker or agent restart only the missing chunks are asked for
again (the ones already on disk are recognised by their sha256).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .contract import BlobSpec, Topics
from .errors import DeployError
from .link import MqttLink

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)


def chunks_on_disk(path: Path, blob: BlobSpec) -> set[int]:
    """Indices of chunks already written (and intact) in a partial file."""
    if not path.exists() or path.stat().st_size != blob.size:
        return set()
    done = set()
    with open(path, "rb") as fh:
        for index, expected in enumerate(blob.chunks):
            if hashlib.sha256(fh.read(blob.chunk_size)).hexdigest() == expected:
                done.add(index)
    return done


@dataclass
class FetchStats:
    fetched: int = 0  # chunks received and written
    resumed: int = 0  # chunks found intact on disk from an earlier attempt
    duplicates: int = 0  # chunks received again after they were written (should stay 0)


class ChunkFetcher:
    def __init__(self, link: MqttLink, topics: Topics, window: int = 16):
        self._link, self._topics, self._window = link, topics, window

    def fetch(
        self,
        blob: BlobSpec,
        dest: Path,
        idle_timeout: float,
        stop: threading.Event,
        progress: Progress | None = None,
    ) -> FetchStats:
        """Fill ``dest`` with every chunk of ``blob``; raises DeployError when chunks stop coming
        for ``idle_timeout`` seconds or one fails its sha256 twice."""
        done = chunks_on_disk(dest, blob)
        stats = FetchStats(resumed=len(done))
        pending = [i for i in range(len(blob.chunks)) if i not in done]
        if done:
            log.info("resuming %s: %d of %d chunks on disk", dest.name, len(done), len(blob.chunks))
        if not pending:
            return stats
        inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        route = self._topics.blob_chunks(blob.sha256)
        self._link.route(route, lambda topic, payload: inbox.put((topic, payload)))
        in_flight: list[str] = []
        failures: dict[int, int] = {}
        fd = os.open(dest, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != blob.size:
                os.ftruncate(fd, blob.size)
            self._refill(blob, pending, in_flight)
            last_progress = time.monotonic()
            total, remaining = len(blob.chunks), len(pending) + len(in_flight)
            while remaining:
                if stop.is_set():
                    raise DeployError("stopped while fetching")
                if time.monotonic() - last_progress > idle_timeout:
                    raise DeployError(
                        f"no chunk for {idle_timeout:.0f} s: {remaining} of {total} chunks missing"
                    )
                try:
                    topic, payload = inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if topic not in in_flight:
                    stats.duplicates += 1  # a late copy of a chunk already written
                    continue
                index = int(topic.rsplit("/", 1)[1])
                if hashlib.sha256(payload).hexdigest() != blob.chunks[index]:
                    failures[index] = failures.get(index, 0) + 1
                    if failures[index] > 1:
                        raise DeployError(f"chunk {index} failed its sha256 check twice")
                    log.warning("chunk %d failed its sha256 check; asking again", index)
                    self._link.release([topic])
                    self._link.hold([topic])
                    continue
                os.pwrite(fd, payload, index * blob.chunk_size)
                stats.fetched += 1
                in_flight.remove(topic)
                self._link.release([topic])
                remaining -= 1
                last_progress = time.monotonic()
                self._refill(blob, pending, in_flight)
                if progress is not None:
                    progress(total - remaining, total)
            os.fsync(fd)
        finally:
            os.close(fd)
            self._link.release(in_flight)
            self._link.unroute(route)
        return stats

    def _refill(self, blob: BlobSpec, pending: list[int], in_flight: list[str]) -> None:
        wanted: list[str] = []
        while pending and len(in_flight) + len(wanted) < self._window:
            wanted.append(self._topics.blob_chunk(blob.sha256, pending.pop(0)))
        in_flight.extend(wanted)
        self._link.hold(wanted)
