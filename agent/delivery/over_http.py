"""Chunks over HTTP(S) Range requests: delivery "http".

The blob's ``urls`` are tried in order over one kept-alive connection each. Each request asks for
a run of contiguous missing chunks (at most a window of them) and the body is read chunk by
chunk: every chunk is checked against its sha256 (the server is not trusted), written at its
offset, and only a chunk's worth of bytes is ever held. A URL that fails — no connection, a
status other than 206 (or 200: the whole file, read through), a body of the wrong length, a
chunk that fails its sha256 check twice, no data for ``fetch_timeout`` — is left for the next,
keeping what it delivered. When every URL failed: DeployError naming each and its problem.

HTTPS checks the server against the system's CA store, plus ``deploy.http_ca_file`` if given.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from agent.contract import BlobSpec
from agent.delivery.chunkfile import POLL_S, ChunkFile, Watch, chunk_length, verified
from agent.errors import DeployError

log = logging.getLogger(__name__)

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class UrlFailed(Exception):
    """This URL cannot deliver the blob; the next one is tried."""


def fetch_by_range(
    blob: BlobSpec,
    file: ChunkFile,
    pending: list[int],
    *,
    window: int,
    watch: Watch,
    ca_file: Path | None,
) -> None:
    """Write every chunk in ``pending`` into ``file`` from the first of ``blob.urls`` that can."""
    missing = sorted(pending)
    problems: list[str] = []
    context = _tls_context(ca_file) if any(u.startswith("https:") for u in blob.urls) else None
    for url in blob.urls:
        source = RangeSource(url, watch.idle_timeout, context)
        watch.progressed()  # each URL has fetch_timeout to send something
        try:
            with _Unblock(source, watch.stop):
                _from(source, blob, file, missing, window=window, watch=watch)
            return
        except UrlFailed as exc:
            watch.check_wanted()  # stopping or superseded: not the URL's fault
            log.warning("%s: %s", url, exc)
            problems.append(f"{url}: {exc}")
        finally:
            source.close()
    raise DeployError(f"no URL delivered {blob.path}: {'; '.join(problems) or 'none given'}")


def _from(
    source: RangeSource,
    blob: BlobSpec,
    file: ChunkFile,
    missing: list[int],
    *,
    window: int,
    watch: Watch,
) -> None:
    """Fill ``missing`` (emptied as chunks are written) from one URL; UrlFailed when it cannot."""
    failures: dict[int, int] = {}
    total = len(blob.chunks)
    while missing:
        run = [missing[0]]
        while len(run) < window and len(run) < len(missing) and missing[len(run)] == run[-1] + 1:
            run.append(missing[len(run)])
        first, last = source.get(blob, run[0], run[-1])
        todo = set(missing)
        for index in range(first, last + 1):
            data = source.read(chunk_length(blob, index))
            if index not in todo:
                continue  # a whole file (200): chunks already on disk are read past
            chunk, problem = verified(blob, index, data)
            if chunk is None:
                failures[index] = failures.get(index, 0) + 1
                if failures[index] > 1:
                    raise UrlFailed(f"chunk {index} {problem} twice")
                log.warning("%s: chunk %d %s; asking again", source.url, index, problem)
                continue
            file.write(index, chunk)
            missing.remove(index)
            watch.progressed()
            watch.check(len(missing), total)


class RangeSource:
    """One URL over one kept-alive connection."""

    def __init__(self, url: str, timeout: float, context: ssl.SSLContext | None):
        self.url, self._timeout, self._context = url, timeout, context
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None

    def get(self, blob: BlobSpec, first: int, last: int) -> tuple[int, int]:
        """Ask for chunks ``first..last``; the chunks the body holds (all for a 200)."""
        start = first * blob.chunk_size
        end = start + sum(chunk_length(blob, i) for i in range(first, last + 1)) - 1
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more, fresh
            try:
                conn = self._connection()
                conn.request("GET", self._path, headers={"Range": f"bytes={start}-{end}"})
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise UrlFailed("the server closed the connection") from None
            except TimeoutError:
                raise UrlFailed(f"no answer for {self._timeout:.0f} s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise UrlFailed(_describe(exc)) from None
        self._response = response
        if response.status == 200:
            self._expect_length(response, blob.size)
            return 0, len(blob.chunks) - 1
        if response.status != 206:
            raise UrlFailed(f"HTTP {response.status} {response.reason}".rstrip())
        match = CONTENT_RANGE.match(response.getheader("Content-Range", ""))
        if match is None or (int(match[1]), int(match[2])) != (start, end):
            got = response.getheader("Content-Range")
            raise UrlFailed(f"asked for bytes {start}-{end}, the server sent {got!r}")
        self._expect_length(response, end - start + 1)
        return first, last

    def read(self, size: int) -> bytes:
        """The next ``size`` bytes of the body; UrlFailed when they do not come."""
        assert self._response is not None
        try:
            data = self._response.read(size)
        except TimeoutError:
            raise UrlFailed(f"no data for {self._timeout:.0f} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise UrlFailed(_describe(exc)) from None
        if len(data) != size:
            raise UrlFailed(f"the body ended early ({len(data)} of {size} bytes of a chunk)")
        return data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = self._response = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._response is not None and not self._response.isclosed():
            self.close()  # a body not read to its end: the connection cannot be reused
        if self.conn is None:
            if self._https:
                self.conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self.conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self.conn

    @staticmethod
    def _expect_length(response: http.client.HTTPResponse, size: int) -> None:
        length = response.getheader("Content-Length")
        if length is not None and length != str(size):
            raise UrlFailed(f"a body of {length} bytes where {size} were asked for")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class _Unblock:
    """While a URL is read: once ``stop`` is set, shut its socket so a blocked read returns."""

    def __init__(self, source: RangeSource, stop: threading.Event):
        self._source, self._stop = source, stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="http-unblock", daemon=True)

    def __enter__(self) -> _Unblock:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(POLL_S):
            conn = self._source.conn
            if self._stop.is_set() and conn is not None and conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
                return
