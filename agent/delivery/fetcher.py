"""Pulls a blob (model or golden inputs) chunk by chunk and writes each to disk as it comes.

The cloud publishes chunk ``i`` of a blob retained on ``blobs/{sha256}/{i}``. The fetcher
subscribes to the individual topics of the chunks it still lacks, a window at a time, and drops
each subscription once its chunk is written — so a chunk is fetched once, and after a broker or
agent restart only the missing chunks are asked for again (the ones already on disk are
recognised by their sha256).

Bounded on every side: paho's callback keeps only chunks of topics in the open window, at most
one per topic, and none longer than the manifest's chunk size (those are dropped before anything
is queued), so memory holds at most a window of chunks. The file grows only as chunks arrive —
each is written at its offset, nothing is preallocated — so a manifest that claims 500 MB costs
disk only for what was received.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.comms.bounded import Mailbox
from agent.comms.guard import Boundary, Oversize
from agent.comms.link import MqttLink
from agent.contract import BlobSpec, Topics, summarise
from agent.delivery.outcomes import Interrupted, Superseded
from agent.errors import DeployError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)
Cancelled = Callable[[], bool]  # True once the download is no longer wanted
POLL_S = 0.2


def chunks_on_disk(path: Path, blob: BlobSpec) -> set[int]:
    """Indices of chunks already written (and intact) in a partial file."""
    if not path.exists() or path.stat().st_size > blob.size:
        return set()
    done = set()
    with open(path, "rb") as fh:
        for index, expected in enumerate(blob.chunks):
            data = fh.read(blob.chunk_size)
            if not data:
                break
            if hashlib.sha256(data).hexdigest() == expected:
                done.add(index)
    return done


@dataclass
class FetchStats:
    fetched: int = 0  # chunks received and written
    resumed: int = 0  # chunks found intact on disk from an earlier attempt
    duplicates: int = 0  # chunks received again after they were written (should stay 0)


class _Window:
    """The chunk topics asked for, and what paho delivered on them (on paho's thread)."""

    def __init__(self, blob: BlobSpec, size: int, stats: FetchStats):
        self._blob, self._stats = blob, stats
        self._open: set[str] = set()
        self._lock = threading.Lock()
        self.arrived: Mailbox[bytes | Oversize] = Mailbox(max_keys=size)

    def offer(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if topic not in self._open:
                self._stats.duplicates += 1  # a late copy of a chunk already written
                return
        limit = self._blob.chunk_size
        if len(payload) > limit:  # dropped here: never queued
            self.arrived.put(topic, Oversize(len(payload), summarise(payload), limit, "chunk size"))
        else:
            self.arrived.put(topic, payload)

    def open(self, topics: list[str]) -> None:
        with self._lock:
            self._open.update(topics)

    def close(self, topic: str) -> None:
        with self._lock:
            self._open.discard(topic)
        self.arrived.discard(topic)


class ChunkFetcher:
    def __init__(self, link: MqttLink, topics: Topics, window: int, boundary: Boundary):
        self._link, self._topics, self._window, self._boundary = link, topics, window, boundary

    def fetch(
        self,
        blob: BlobSpec,
        dest: Path,
        idle_timeout: float,
        stop: threading.Event,
        progress: Progress | None = None,
        cancelled: Cancelled = lambda: False,
    ) -> FetchStats:
        """Fill ``dest`` with every chunk of ``blob``. Raises DeployError when chunks stop coming
        for ``idle_timeout`` seconds or one fails its check twice, Interrupted when ``stop`` is
        set, Superseded once ``cancelled()`` says so."""
        done = chunks_on_disk(dest, blob)
        stats = FetchStats(resumed=len(done))
        pending = [i for i in range(len(blob.chunks)) if i not in done]
        if done:
            log.info("resuming %s: %d of %d chunks on disk", dest.name, len(done), len(blob.chunks))
        if not pending:
            return stats
        transfer = _Transfer(
            self._link, self._topics, blob, pending=pending, stats=stats, size=self._window
        )
        route = self._topics.blob_chunks(blob.sha256)
        self._link.route(route, self._boundary.wrap(transfer.window.offer))
        fd = os.open(dest, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            transfer.run(
                fd,
                idle_timeout=idle_timeout,
                stop=stop,
                progress=progress or (lambda _done, _of: None),
                cancelled=cancelled,
            )
            os.fsync(fd)
        finally:
            os.close(fd)
            self._link.release(transfer.in_flight)
            self._link.unroute(route)
        return stats


class _Transfer:
    """One blob's chunks: a window of subscriptions, refilled as chunks are written."""

    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        blob: BlobSpec,
        *,
        pending: list[int],
        stats: FetchStats,
        size: int,
    ) -> None:
        self._link, self._topics, self._blob, self._stats = link, topics, blob, stats
        self._pending, self._size = pending, size
        self.window = _Window(blob, size, stats)
        self.in_flight: list[str] = []
        self._failures: dict[int, int] = {}

    def run(
        self,
        fd: int,
        *,
        idle_timeout: float,
        stop: threading.Event,
        progress: Progress,
        cancelled: Cancelled,
    ) -> None:
        self._refill()
        last_progress = time.monotonic()
        total, remaining = len(self._blob.chunks), len(self._pending) + len(self.in_flight)
        while remaining:
            if stop.is_set():
                raise Interrupted("stopped while fetching")
            if cancelled():
                raise Superseded("a newer announcement arrived")
            if time.monotonic() - last_progress > idle_timeout:
                raise DeployError(
                    f"no chunk for {idle_timeout:.0f} s: {remaining} of {total} chunks missing"
                )
            item = self.window.arrived.get(timeout=POLL_S)
            if item is not None and self._write(fd, *item):
                remaining -= 1
                last_progress = time.monotonic()
                self._refill()
                progress(total - remaining, total)

    def _write(self, fd: int, topic: str, payload: bytes | Oversize) -> bool:
        """Write a good chunk and close its topic; ask once more for a bad one (True: written)."""
        index = int(topic.rsplit("/", 1)[1])
        chunk, problem = _verified(self._blob, index, payload)
        if chunk is None:
            self._failures[index] = self._failures.get(index, 0) + 1
            if self._failures[index] > 1:
                raise DeployError(f"chunk {index} {problem} twice")
            log.warning("chunk %d %s; asking again", index, problem)
            self._link.release([topic])
            self._link.hold([topic])
            return False
        os.pwrite(fd, chunk, index * self._blob.chunk_size)
        self._stats.fetched += 1
        self.in_flight.remove(topic)
        self.window.close(topic)
        self._link.release([topic])
        return True

    def _refill(self) -> None:
        wanted: list[str] = []
        while self._pending and len(self.in_flight) + len(wanted) < self._size:
            wanted.append(self._topics.blob_chunk(self._blob.sha256, self._pending.pop(0)))
        self.in_flight.extend(wanted)
        self.window.open(wanted)
        self._link.hold(wanted)


def _verified(blob: BlobSpec, index: int, payload: bytes | Oversize) -> tuple[bytes | None, str]:
    """(the chunk, "") when it can be written, else (None, what is wrong with it)."""
    if isinstance(payload, Oversize):
        return None, f"is larger than the chunk size ({payload.size} > {blob.chunk_size} bytes)"
    if hashlib.sha256(payload).hexdigest() != blob.chunks[index]:
        return None, "failed its sha256 check"
    return payload, ""
