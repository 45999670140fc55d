"""Chunk transports in process: delivery "request" against a scripted link that answers (or
not) like `edgewise serve`, delivery "retained" against a scripted link that delivers (or not)
the retained message of each topic subscribed, delivery "http" against a real HTTP server
honouring Range."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent.comms.guard import Boundary
from agent.config import DeployConfig
from agent.contract import BlobSpec, ChunkRequest, Topics, describe_blob
from agent.delivery.fetcher import ChunkFetcher
from agent.errors import DeployError
from range_server import RangeServer

DEVICE = "cam-1"
TOPICS = Topics()

# --- in process: the request transport against a scripted link ---------------------------------


class AnsweringLink:
    """Stands in for MqttLink: a chunk request published on ``wants`` is answered at once on the
    inbox, except while ``mute`` and for the first request of an index in ``drop``."""

    def __init__(self, blob: BlobSpec, chunks: list[bytes]):
        self._blob, self._chunks = blob, chunks
        self.connected = threading.Event()
        self.connected.set()
        self.epoch = 1
        self.mute = False
        self.drop: set[int] = set()
        self.asked: list[tuple[int, ...]] = []
        self.first_request = threading.Event()
        self.handler: Callable[[str, bytes], None] | None = None
        self.held: set[str] = set()
        self.holds: list[int] = []  # the QoS of each inbox subscription made
        self.silent_holds = 0  # this many first subscriptions receive nothing (a lost node's)

    def route(self, _filter: str, handler: Callable[[str, bytes], None]) -> None:
        self.handler = handler

    def unroute(self, _filter: str) -> None:
        self.handler = None

    def hold(self, topics: list[str], qos: int = 1) -> None:
        self.held.update(topics)
        self.holds.extend(qos for _ in topics)

    def release(self, topics: list[str]) -> None:
        self.held.difference_update(topics)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        assert topic == TOPICS.wants(DEVICE) and qos == 1 and not retain
        request = ChunkRequest.decode(payload)
        self.asked.append(request.chunks)
        self.first_request.set()
        if self.mute or len(self.holds) <= self.silent_holds:
            return
        for index in request.chunks:
            if index in self.drop:
                self.drop.discard(index)
                continue
            assert self.handler is not None
            self.handler(TOPICS.inbox_chunk(DEVICE, request.sha256, index), self._chunks[index])


def _blob(tmp_path: Path, size: int, chunk: int) -> tuple[BlobSpec, list[bytes]]:
    data = os.urandom(size)
    (tmp_path / "model.onnx").write_bytes(data)
    return describe_blob(tmp_path / "model.onnx", chunk), [
        data[i : i + chunk] for i in range(0, size, chunk)
    ]


def _fetcher(link: Any, window: int = 4) -> ChunkFetcher:
    return ChunkFetcher(link, TOPICS, window, Boundary("test", lambda *_: None), device=DEVICE)


def test_request_mode_asks_for_a_window_and_refills_it(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 20 * 1024, 1024)
    link = AnsweringLink(blob, chunks)
    dest = tmp_path / "x.part"
    deploy = DeployConfig(request_retry_s=60)
    stats = _fetcher(link).fetch(
        blob, dest, 5, threading.Event(), delivery="request", deploy=deploy
    )
    assert dest.read_bytes() == b"".join(chunks)
    assert (stats.fetched, stats.resumed, stats.duplicates) == (20, 0, 0)
    assert link.asked[0] == (0, 1, 2, 3)  # the first window, then one more per chunk written
    assert sorted(i for request in link.asked for i in request) == list(range(20))
    assert not link.held  # the inbox subscription is dropped


def test_request_mode_asks_again_for_a_lost_answer(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 8 * 1024, 1024)
    link = AnsweringLink(blob, chunks)
    link.drop = {2, 5}
    stats = _fetcher(link).fetch(
        blob,
        tmp_path / "x.part",
        5,
        threading.Event(),
        delivery="request",
        deploy=DeployConfig(request_retry_s=0.3),
    )
    asked = Counter(i for request in link.asked for i in request)
    assert asked[2] == 2 and asked[5] == 2 and asked[0] == 1
    assert (stats.fetched, stats.duplicates) == (8, 0)


def test_request_mode_subscribes_its_inbox_afresh_when_it_asks_again(tmp_path: Path) -> None:
    """A subscription the broker keeps but never delivers to (a NATS cluster node lost) stays
    silent however often the device asks: asking again subscribes the inbox anew, at QoS 0."""
    blob, chunks = _blob(tmp_path, 6 * 1024, 1024)
    link = AnsweringLink(blob, chunks)
    link.silent_holds = 1
    stats = _fetcher(link).fetch(
        blob,
        tmp_path / "x.part",
        5,
        threading.Event(),
        delivery="request",
        deploy=DeployConfig(request_retry_s=0.3),
    )
    assert stats.fetched == 6
    assert len(link.holds) >= 2 and set(link.holds) == {0}
    assert not link.held


def test_request_mode_asks_again_after_a_reconnect(tmp_path: Path) -> None:
    """Nothing comes on the first connection; after a reconnect (a failover to another node:
    the epoch changes) the chunks in flight are asked for again there, long before the retry
    interval."""
    blob, chunks = _blob(tmp_path, 6 * 1024, 1024)
    link = AnsweringLink(blob, chunks)
    link.mute = True

    def fail_over() -> None:
        assert link.first_request.wait(5)
        link.mute = False
        link.epoch += 1

    thread = threading.Thread(target=fail_over)
    thread.start()
    started = time.monotonic()
    stats = _fetcher(link).fetch(
        blob,
        tmp_path / "x.part",
        20,
        threading.Event(),
        delivery="request",
        deploy=DeployConfig(request_retry_s=60),
    )
    thread.join()
    assert stats.fetched == 6 and time.monotonic() - started < 10
    assert link.asked[:2] == [(0, 1, 2, 3), (0, 1, 2, 3)]


def test_request_mode_gives_up_after_the_fetch_timeout(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 4 * 1024, 1024)
    link = AnsweringLink(blob, chunks)
    link.mute = True
    with pytest.raises(DeployError, match="no chunk for 1 s: 4 of 4 chunks missing"):
        _fetcher(link).fetch(
            blob,
            tmp_path / "x.part",
            1,
            threading.Event(),
            delivery="request",
            deploy=DeployConfig(request_retry_s=0.2),
        )
    assert len(link.asked) >= 3  # asked again while waiting


# --- in process: the retained transport against a scripted link -------------------------------


class RetainingLink:
    """Stands in for MqttLink over a broker holding every chunk retained: subscribing to a chunk
    topic delivers its chunk at once, except while ``mute`` and for the first subscription of an
    index in ``drop`` (the retained message a NATS node did not deliver, or one lost in a
    reconnect race). ``subscribed`` lists the indices of every subscription the fetcher made."""

    def __init__(self, blob: BlobSpec, chunks: list[bytes]):
        self._blob, self._chunks = blob, chunks
        self.connected = threading.Event()
        self.connected.set()
        self.epoch = 1
        self.mute = False
        self.drop: set[int] = set()
        self.subscribed: list[int] = []
        self.released: list[int] = []
        self.first_hold = threading.Event()
        self.handler: Callable[[str, bytes], None] | None = None
        self.held: set[str] = set()
        self._lock = threading.Lock()

    def route(self, _filter: str, handler: Callable[[str, bytes], None]) -> None:
        self.handler = handler

    def unroute(self, _filter: str) -> None:
        self.handler = None

    def hold(self, topics: list[str], qos: int = 1) -> None:
        with self._lock:
            self.held.update(topics)
            self.subscribed.extend(self._index(t) for t in topics)
        self.first_hold.set()
        self._deliver(topics)

    def release(self, topics: list[str]) -> None:
        with self._lock:
            self.held.difference_update(topics)
            self.released.extend(self._index(t) for t in topics)

    def reconnect(self, lost: set[int]) -> None:
        """A new connection (the epoch changes), on which the link subscribes again to every
        topic it holds, as MqttLink does; the retained messages of ``lost`` do not come."""
        with self._lock:
            topics = sorted(self.held)
        self.mute, self.drop = False, set(lost)
        self.epoch += 1
        self._deliver(topics)

    def _deliver(self, topics: list[str]) -> None:
        if self.mute:
            return
        for topic in topics:
            index = self._index(topic)
            if index in self.drop:
                self.drop.discard(index)
                continue
            assert self.handler is not None
            self.handler(topic, self._chunks[index])

    def _index(self, topic: str) -> int:
        assert topic.startswith(TOPICS.blob_chunks(self._blob.sha256).rstrip("+"))
        return int(topic.rsplit("/", 1)[1])


def test_retained_mode_subscribes_again_to_a_chunk_that_did_not_come(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 8 * 1024, 1024)
    link = RetainingLink(blob, chunks)
    link.drop = {2, 5}
    dest = tmp_path / "x.part"
    stats = _fetcher(link).fetch(
        blob, dest, 5, threading.Event(), deploy=DeployConfig(request_retry_s=0.3)
    )
    assert dest.read_bytes() == b"".join(chunks)
    subscribed = Counter(link.subscribed)
    assert subscribed[2] == 2 and subscribed[5] == 2  # unsubscribed and subscribed again
    assert all(subscribed[i] == 1 for i in (0, 1, 3, 4, 6, 7))  # only the stalled ones
    assert Counter(link.released)[2] == 2  # once to subscribe again, once when written
    assert (stats.fetched, stats.duplicates) == (8, 0)
    assert not link.held


def test_retained_mode_without_a_retry_in_time_gives_up(tmp_path: Path) -> None:
    """The same lost retained message, with the retry interval past the fetch timeout: the
    fetch fails — it is the subscription made again that completes the transfer above."""
    blob, chunks = _blob(tmp_path, 4 * 1024, 1024)
    link = RetainingLink(blob, chunks)
    link.drop = {1}
    with pytest.raises(DeployError, match="no chunk for 1 s: 1 of 4 chunks missing"):
        _fetcher(link).fetch(
            blob, tmp_path / "x.part", 1, threading.Event(), deploy=DeployConfig(request_retry_s=60)
        )
    assert Counter(link.subscribed)[1] == 1


def test_retained_mode_subscribes_again_after_a_reconnect(tmp_path: Path) -> None:
    """Nothing comes on the first connection. After a reconnect (a failover: the epoch
    changes) the link subscribes afresh to every held topic, and the new node delivers all but
    chunk 1's retained message; the fetcher subscribes again to chunk 1 only — not to the chunks
    the reconnect brought, which would come twice."""
    blob, chunks = _blob(tmp_path, 6 * 1024, 1024)
    link = RetainingLink(blob, chunks)
    link.mute = True

    def fail_over() -> None:
        assert link.first_hold.wait(5)
        link.reconnect(lost={1})

    thread = threading.Thread(target=fail_over)
    thread.start()
    started = time.monotonic()
    stats = _fetcher(link).fetch(
        blob, tmp_path / "x.part", 20, threading.Event(), deploy=DeployConfig(request_retry_s=0.5)
    )
    thread.join()
    assert (tmp_path / "x.part").read_bytes() == b"".join(chunks)
    assert stats.fetched == 6 and time.monotonic() - started < 10
    assert link.subscribed[:4] == [0, 1, 2, 3]  # the first window
    assert Counter(link.subscribed) == {0: 1, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1}
    assert stats.duplicates == 0 and not link.held


# --- in process: the http transport against a real server ---------------------------------------


@pytest.fixture
def http_blob(tmp_path: Path) -> Iterator[tuple[RangeServer, BlobSpec, bytes]]:
    data = os.urandom(300 * 1024 + 77)
    (tmp_path / "model.onnx").write_bytes(data)
    blob = describe_blob(tmp_path / "model.onnx", 16 * 1024)
    server = RangeServer({"m": data}).start()
    yield server, blob, data
    server.close()


def _fetch_http(blob: BlobSpec, dest: Path, urls: list[str], window: int = 4) -> Any:
    spec = blob.model_copy(update={"urls": tuple(urls)})
    return _fetcher(None, window).fetch(spec, dest, 5, threading.Event(), delivery="http")


def test_http_reads_runs_of_chunks_on_one_connection(http_blob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, blob, data = http_blob
    stats = _fetch_http(blob, tmp_path / "x.part", [server.url("m")])
    assert (tmp_path / "x.part").read_bytes() == data and stats.fetched == len(blob.chunks)
    served = server.served("m")
    assert len(served) == 5  # 19 chunks, 4 per request
    assert served[0] == (0, 4 * 16 * 1024 - 1) and served[-1][1] == len(data) - 1
    assert server.connections == 1  # kept alive


def test_http_resumes_from_disk_and_asks_only_for_missing_runs(http_blob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, blob, data = http_blob
    dest = tmp_path / "x.part"
    dest.write_bytes(data[: 10 * 16 * 1024])
    stats = _fetch_http(blob, dest, [server.url("m")], window=32)
    assert dest.read_bytes() == data and (stats.resumed, stats.fetched) == (10, 9)
    assert server.served("m") == [(10 * 16 * 1024, len(data) - 1)]


def test_http_a_corrupt_chunk_is_asked_for_again(http_blob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, blob, data = http_blob
    bad = 5 * 16 * 1024 + 3
    server.corrupt["m"] = {bad}
    ranges: list[tuple[int, int]] = []

    def heal(path: str, first: int, last: int) -> None:  # sent corrupt once, then good
        ranges.append((first, last))
        if first <= bad <= last:
            server.corrupt.clear()

    server.record = heal  # type: ignore[method-assign]
    _fetch_http(blob, tmp_path / "x.part", [server.url("m")])
    assert (tmp_path / "x.part").read_bytes() == data
    assert (5 * 16 * 1024, 6 * 16 * 1024 - 1) in ranges  # asked once more, from chunk 5


def test_http_moves_to_the_next_url_and_names_each_failure(http_blob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, blob, data = http_blob
    server.files["bad"] = data
    server.corrupt["bad"] = {3 * 16 * 1024}
    urls = [server.url("gone"), server.url("bad"), server.url("m")]
    _fetch_http(blob, tmp_path / "x.part", urls)
    assert (tmp_path / "x.part").read_bytes() == data
    with pytest.raises(DeployError) as failed:
        _fetch_http(blob, tmp_path / "y.part", urls[:2])
    assert str(failed.value) == (
        f"no URL delivered model.onnx: {urls[0]}: HTTP 404 Not Found; "
        f"{urls[1]}: chunk 3 failed its sha256 check twice"
    )


def test_http_a_server_ignoring_range_is_read_through(http_blob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, blob, data = http_blob
    dest = tmp_path / "x.part"
    dest.write_bytes(data[: 2 * 16 * 1024])
    import range_server

    server.RequestHandlerClass = type(
        "NoRange", (range_server._Handler,), {"do_GET": _whole_file(range_server._Handler.do_GET)}
    )
    stats = _fetch_http(blob, dest, [server.url("m")])
    assert dest.read_bytes() == data and (stats.resumed, stats.fetched) == (2, 17)
    assert server.served("m") == [(0, len(data) - 1)]


def _whole_file(do_get: Callable[[Any], None]) -> Callable[[Any], None]:
    def without_range(handler: Any) -> None:
        del handler.headers["Range"]
        do_get(handler)

    return without_range
