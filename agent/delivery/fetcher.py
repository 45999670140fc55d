"""Pulls a blob (model or golden inputs) chunk by chunk and writes each to disk as it comes, by
the manifest's ``delivery``: "retained" and "request" over MQTT (:mod:`over_mqtt`), "http" by
Range requests (:mod:`over_http`). Whatever the transport, chunks already on disk are recognised
by their sha256 and not asked for again, every chunk is checked before it is written at its
offset (:mod:`chunkfile`), and a download ends on stop, on a newer announcement, or after
``fetch_timeout`` seconds without a new chunk.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from agent.comms.guard import Boundary
from agent.comms.link import MqttLink
from agent.config import DeployConfig
from agent.contract import BlobSpec, Delivery, Topics
from agent.delivery.chunkfile import Cancelled, ChunkFile, FetchStats, Progress, Watch
from agent.delivery.chunkfile import chunks_on_disk as chunks_on_disk
from agent.delivery.over_http import fetch_by_range
from agent.delivery.over_mqtt import Asker, MqttTransfer, Requests, Subscriptions
from agent.delivery.over_mqtt import _Window as _Window
from agent.errors import DeployError

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "ChunkFetcher", "FetchStats", "Progress", "chunks_on_disk"]


class ChunkFetcher:
    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        window: int,
        boundary: Boundary,
        device: str | None = None,
    ):
        self._link, self._topics, self._window, self._boundary = link, topics, window, boundary
        self._device = device  # whose inbox answers come to (delivery "request")

    def fetch(
        self,
        blob: BlobSpec,
        dest: Path,
        idle_timeout: float,
        stop: threading.Event,
        progress: Progress | None = None,
        cancelled: Cancelled = lambda: False,
        *,
        delivery: Delivery = "retained",
        deploy: DeployConfig | None = None,
    ) -> FetchStats:
        """Fill ``dest`` with every chunk of ``blob``. Raises DeployError when chunks stop coming
        for ``idle_timeout`` seconds, one fails its check twice (over MQTT) or no URL delivers
        (over HTTP), Interrupted when ``stop`` is set, Superseded once ``cancelled()`` says so.
        ``deploy`` supplies ``request_retry_s`` and ``http_ca_file`` (defaults without it)."""
        deploy = deploy or DeployConfig()
        done = chunks_on_disk(dest, blob)
        stats = FetchStats(resumed=len(done))
        pending = [i for i in range(len(blob.chunks)) if i not in done]
        if done:
            log.info("resuming %s: %d of %d chunks on disk", dest.name, len(done), len(blob.chunks))
        if not pending:
            return stats
        watch = Watch(idle_timeout, stop, cancelled)
        file = ChunkFile(dest, blob, stats, progress or (lambda _done, _of: None))
        ok = False
        try:
            if delivery == "http":
                fetch_by_range(
                    blob,
                    file,
                    pending,
                    window=self._window,
                    watch=watch,
                    ca_file=deploy.http_ca_file,
                )
            else:
                self._over_mqtt(blob, file, pending, stats, watch, delivery, deploy)
            ok = True
        finally:
            file.close(sync=ok)
        return stats

    def _over_mqtt(
        self,
        blob: BlobSpec,
        file: ChunkFile,
        pending: list[int],
        stats: FetchStats,
        watch: Watch,
        delivery: Delivery,
        deploy: DeployConfig,
    ) -> None:
        asker: Asker
        if delivery == "request":
            if not self._device:
                raise DeployError('delivery "request" needs this device\'s id')
            asker = Requests(self._link, self._topics, blob, self._device, deploy.request_retry_s)
        else:
            asker = Subscriptions(self._link, self._topics, blob, deploy.request_retry_s)
        transfer = MqttTransfer(blob, asker, pending=pending, stats=stats, size=self._window)
        self._link.route(asker.route, self._boundary.wrap(transfer.window.offer))
        asker.open()
        try:
            transfer.run(file, watch)
        finally:
            transfer.close()
            self._link.unroute(asker.route)
