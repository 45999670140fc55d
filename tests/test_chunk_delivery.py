"""Delivery "request" (chunks asked for on devices/{id}/wants, answered on the device's inbox)
and "http" (Range requests to the blob's URLs) end to end: the real agent on a private Mosquitto,
a responder standing in for `edgewise serve`, a Range server standing in for object storage.
The transports in process: tests/device/test_chunk_transports.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from device_harness import DEPLOY, DEVICE, TOPICS, Device, install, send, start_device
from range_server import RangeServer

from agent.contract import (
    ChunkRequest,
    Package,
    PayloadError,
    iter_chunks,
    load_private_key,
    sign_manifest,
)
from agent.delivery.store import ModelStore
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect


class Responder:
    """Answers every device's chunk requests from a package's files, as `edgewise serve` would;
    the first answer for each (sha256, index) in ``drop`` is lost."""

    def __init__(self, broker: Any, package: Package, drop: set[tuple[str, int]] | None = None):
        self.files = {blob.sha256: (blob, path) for blob, path in package.blobs()}
        self.asked: Counter[tuple[str, int]] = Counter()
        self.strays: list[bytes] = []  # wants messages that were not requests for these files
        self._drop = drop or set()
        subscribed = threading.Event()
        self.client = connect(BrokerAddress(broker.host, broker.port))
        self.client.on_message = self._answer
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe(TOPICS.all_devices("wants"), qos=1)
        assert subscribed.wait(5)

    def _answer(self, client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            request = ChunkRequest.decode(msg.payload)
            blob, path = self.files[request.sha256]
        except (PayloadError, KeyError):
            self.strays.append(msg.payload)
            return
        with open(path, "rb") as fh:
            for index in request.chunks:
                self.asked[blob.sha256, index] += 1
                if self.asked[blob.sha256, index] == 1 and (blob.sha256, index) in self._drop:
                    continue
                fh.seek(index * blob.chunk_size)
                topic = TOPICS.inbox_chunk(TOPICS.device_of(msg.topic), blob.sha256, index)
                client.publish(topic, fh.read(blob.chunk_size), qos=1)

    def close(self) -> None:
        disconnect(self.client)


def announced(package: Package, key: Path, **changes: Any) -> bytes:
    """The package's manifest with ``changes``, bound to the device and signed again."""
    manifest = package.manifest.model_copy(update={"target": f"device:{DEVICE}", **changes})
    return sign_manifest(manifest, load_private_key(key))


def retained_blob_topics(broker: Any) -> list[str]:
    """Topics under blobs/ the broker holds retained (a retained sentinel ends the replay)."""
    client = connect(BrokerAddress(broker.host, broker.port))
    sentinel, seen, done = "edgewise/v1/test/sentinel", [], threading.Event()
    client.publish(sentinel, b"x", qos=1, retain=True).wait_for_publish(5)
    client.on_message = lambda _c, _u, m: (
        done.set() if m.topic == sentinel else seen.append(m.topic)
    )
    client.subscribe([(TOPICS.all_blobs(), 1), (sentinel, 1)])
    assert done.wait(5)
    disconnect(client)
    return seen


def serves(dev: Device, version: str) -> None:
    dev.deployment("active")
    deadline = time.monotonic() + 20
    while version not in dev.serving(1) and time.monotonic() < deadline:
        pass
    assert dev.serving() == {version}


@pytest.fixture
def start(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> Iterator[Callable[..., Device]]:  # type: ignore[no-untyped-def]
    """Starts the agent (serving 1.0.0 from disk) with ``[deploy]`` lines added; stops it after."""
    started: list[Device] = []

    def run(extra: str = "", serving: bool = True) -> Device:
        if not (tmp_path / "state" / "current").exists():
            install(compiled.package, tmp_path / "state")
        dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=DEPLOY + extra)
        started.append(dev)
        if serving:
            assert dev.serving() == {"1.0.0"}
        return dev

    yield run
    for dev in started:
        assert dev.agent.stop() == 0, dev.agent.output()[-3000:]


def test_request_mode_installs_from_answers_alone(
    start, mosquitto, cloud, v2, signing_keys
) -> None:  # type: ignore[no-untyped-def]
    dev = start("request_retry_s = 5\n")
    responder = Responder(mosquitto, v2)
    try:
        send(cloud, announced(v2, signing_keys[0], delivery="request"))
        installed = dev.deployment("installed", timeout=60)
        serves(dev, "1.1.0")
    finally:
        responder.close()
    every = {(blob.sha256, i) for blob, _ in v2.blobs() for i in range(len(blob.chunks))}
    assert set(responder.asked) == every and not responder.strays
    assert sum(responder.asked.values()) == len(every)  # each chunk asked for once
    assert installed["delivery"] == "request"
    assert installed["chunks"] == {"fetched": len(every), "resumed": 0, "duplicates": 0}
    assert retained_blob_topics(mosquitto) == []


def test_request_mode_asks_again_for_lost_answers(
    start, mosquitto, cloud, v2, signing_keys
) -> None:  # type: ignore[no-untyped-def]
    dev = start("request_retry_s = 0.5\n")
    model = v2.manifest.model.sha256
    responder = Responder(mosquitto, v2, drop={(model, 1), (model, 3)})
    try:
        send(cloud, announced(v2, signing_keys[0], delivery="request"))
        serves(dev, "1.1.0")
    finally:
        responder.close()
    assert responder.asked[model, 1] == 2 and responder.asked[model, 3] == 2
    assert responder.asked[model, 0] == 1


def test_request_mode_resumes_a_partial_download(
    start, mosquitto, cloud, compiled, v2, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    model = v2.manifest.model
    install(compiled.package, tmp_path / "state")
    chunks = list(iter_chunks(v2.model_path, model.chunk_size))
    keep = len(chunks) // 2
    ModelStore(tmp_path / "state").partial_path(model).write_bytes(b"".join(chunks[:keep]))
    responder = Responder(mosquitto, v2)
    try:
        send(cloud, announced(v2, signing_keys[0], delivery="request"))  # waiting, retained
        dev = start("request_retry_s = 5\n", serving=False)
        installed = dev.deployment("installed", timeout=60)
        serves(dev, "1.1.0")
    finally:
        responder.close()
    asked = {i for sha, i in responder.asked if sha == model.sha256}
    assert asked == set(range(keep, len(chunks)))  # never the chunks already on disk
    assert installed["chunks"]["resumed"] == keep


def _http_manifest(v2: Package, server: RangeServer, model_urls: list[str]) -> dict[str, Any]:
    golden = v2.manifest.golden
    assert golden is not None
    return {
        "delivery": "http",
        "model": v2.manifest.model.model_copy(update={"urls": tuple(model_urls)}),
        "golden": golden.model_copy(update={"urls": (server.url(f"v2/{golden.path}"),)}),
    }


@pytest.fixture
def files_server(v2: Package) -> Iterator[RangeServer]:
    server = RangeServer({f"v2/{blob.path}": path.read_bytes() for blob, path in v2.blobs()})
    yield server.start()
    server.close()


def test_http_mode_installs_from_the_next_url_after_a_404(
    start, cloud, v2, signing_keys, files_server
) -> None:  # type: ignore[no-untyped-def]
    dev = start()
    urls = [files_server.url("gone/model.onnx"), files_server.url("v2/model.onnx")]
    send(cloud, announced(v2, signing_keys[0], **_http_manifest(v2, files_server, urls)))
    installed = dev.deployment("installed", timeout=60)
    serves(dev, "1.1.0")
    assert installed["delivery"] == "http"
    served = files_server.served("v2/model.onnx")
    assert sum(last - first + 1 for first, last in served) == v2.manifest.model.size


def test_http_mode_corrupt_everywhere_is_rejected(
    start, cloud, v2, signing_keys, files_server
) -> None:  # type: ignore[no-untyped-def]
    dev = start()
    model = v2.manifest.model
    urls = []
    for name in ("a", "b"):
        files_server.files[f"{name}/model.onnx"] = v2.model_path.read_bytes()
        files_server.corrupt[f"{name}/model.onnx"] = {model.chunk_size + 7}
        urls.append(files_server.url(f"{name}/model.onnx"))
    send(cloud, announced(v2, signing_keys[0], **_http_manifest(v2, files_server, urls)))
    reason = dev.rejected(timeout=60)
    assert "\n" not in reason
    for url in urls:
        assert f"{url}: chunk 1 failed its sha256 check twice" in reason
    assert dev.serving() == {"1.0.0"}
