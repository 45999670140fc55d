"""``edgewise serve`` on a private Mosquitto: a raw device client asks on its ``wants`` topic and
gets exactly those chunks, byte-exact, on its inbox, not retained; bad requests and unknown
blobs are counted and never stop it; the fleet state is published and decodes; the command
stops cleanly (exit 0) on SIGTERM and Ctrl-C."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from helpers import BIN
from upstream_harness import wait_until

from agent.contract import ChunkRequest, Topics, describe_blob
from compiler.fleet.blobstore import BlobStore
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.fleet.serve import ServeOptions, Service
from compiler.fleet.state import FleetState
from compiler.fleet.view import FleetView

TOPICS = Topics()
CHUNK = 64 * 1024


class RawDevice:
    """A plain paho client playing a device: publishes requests, records its inbox."""

    def __init__(self, broker: MosquittoBroker, device_id: str):
        self.id = device_id
        self.client = connect(BrokerAddress(broker.host, broker.port), client_id=device_id)
        self.got: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self.client.on_message = self._on_message
        Subscriber(self.client).subscribe([(f"{TOPICS.device(device_id, 'inbox')}/#", 1)])

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append(message)
            self._cond.notify_all()

    def ask(self, payload: bytes) -> None:
        self.client.publish(TOPICS.wants(self.id), payload, qos=1).wait_for_publish(10)

    def wait_for(self, count: int, timeout: float = 20) -> list[mqtt.MQTTMessage]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.got) >= count, timeout), len(self.got)
            return list(self.got)

    def close(self) -> None:
        disconnect(self.client)


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, str]:
    """A 5.5-chunk file in a blob store; (store folder, sha256)."""
    data = os.urandom(5 * CHUNK + CHUNK // 2)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    spec = describe_blob(path, CHUNK)
    BlobStore(tmp_path / "blobs").put(spec, path)
    return tmp_path / "blobs", spec.sha256


@pytest.fixture
def service(mosquitto: MosquittoBroker, blob: tuple[Path, str]) -> Iterator[Service]:
    options = ServeOptions(blob[0], TOPICS, state_interval=0.2)
    running = Service(BrokerAddress(mosquitto.host, mosquitto.port), options).start()
    yield running
    running.stop()


@pytest.fixture
def device(mosquitto: MosquittoBroker) -> Iterator[RawDevice]:
    dev = RawDevice(mosquitto, "cam-1")
    yield dev
    dev.close()


def chunk_of(store: Path, sha256: str, index: int) -> bytes:
    return (store / sha256).read_bytes()[index * CHUNK : (index + 1) * CHUNK]


def test_serve_answers_exactly_the_chunks_asked_for_byte_exact_and_not_retained(  # type: ignore[no-untyped-def]
    service, device, blob, mosquitto
) -> None:
    store, sha = blob
    device.ask(ChunkRequest(sha256=sha, chunks=(0, 2, 5)).encode())
    first = device.wait_for(3)
    # Then one more: once it is in, anything extra from the first request would be too.
    device.ask(ChunkRequest(sha256=sha, chunks=(1,)).encode())
    got = device.wait_for(4)
    assert sorted(m.topic for m in got) == sorted(
        TOPICS.inbox_chunk("cam-1", sha, i) for i in (0, 1, 2, 5)
    )
    for message in got:
        index = int(message.topic.rsplit("/", 1)[1])
        assert message.payload == chunk_of(store, sha, index)
        assert not message.retain and message.qos == 1
    last = next(m for m in first if m.topic.endswith("/5"))  # answers may come in any order
    assert len(last.payload) == CHUNK // 2  # the short last chunk is exact too
    # the service counts a chunk once its publish returns, which can be after the device has it
    wait_until(lambda: service.counters.chunks == 4, 10, lambda: str(service.counters))
    assert service.counters.bytes == 3 * CHUNK + CHUNK // 2
    # Nothing stays on the broker: a newcomer subscribing to the inbox gets no retained chunk.
    assert retained_inbox(mosquitto, "cam-1") == 0


def retained_inbox(broker: MosquittoBroker, device_id: str) -> int:
    """How many retained messages a fresh subscriber to the device's inbox receives (ends on a
    marker message, which the broker delivers after the retained ones)."""
    client = connect(BrokerAddress(broker.host, broker.port))
    seen: list[str] = []
    done = threading.Event()
    inbox, marker = f"{TOPICS.device(device_id, 'inbox')}/#", TOPICS.device("marker", "end")
    client.message_callback_add(inbox, lambda _c, _u, m: seen.append(m.topic))
    client.message_callback_add(marker, lambda _c, _u, _m: done.set())
    try:
        Subscriber(client).subscribe([(inbox, 1), (marker, 1)])
        client.publish(marker, b"end", qos=1)
        assert done.wait(10)
    finally:
        disconnect(client)
    return len(seen)


def test_a_bad_request_is_counted_and_the_next_one_answered(  # type: ignore[no-untyped-def]
    service, device, blob, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="compiler.fleet.chunkserver")
    device.ask(b"{not json")
    device.ask(b'{"sha256": "abc", "chunks": [0]}')
    device.ask(ChunkRequest(sha256=blob[1], chunks=(3,)).encode())
    got = device.wait_for(1)
    assert [m.topic for m in got] == [TOPICS.inbox_chunk("cam-1", blob[1], 3)]
    assert service.counters.bad_requests == 2 and service.counters.requests == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "ignored: " in warnings[0]  # once per device, not per request


def test_an_unknown_blob_is_one_warning_and_counted(service, device, blob, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="compiler.fleet.chunkserver")
    unknown = "0" * 64
    for _ in range(2):
        device.ask(ChunkRequest(sha256=unknown, chunks=(0, 1)).encode())
    device.ask(ChunkRequest(sha256=blob[1], chunks=(9, 4)).encode())  # 9: past the end
    got = device.wait_for(1)
    assert [m.topic for m in got] == [TOPICS.inbox_chunk("cam-1", blob[1], 4)]
    assert service.counters.unknown_blobs == 2 and service.counters.bad_chunks == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert sum(unknown in w for w in warnings) == 1, warnings


def test_one_device_asking_for_much_does_not_starve_another(  # type: ignore[no-untyped-def]
    mosquitto, tmp_path
) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(1024 * 16 * 1024))  # 1024 chunks of 16 KiB
    spec = describe_blob(path, 16 * 1024)
    BlobStore(tmp_path / "blobs").put(spec, path)
    service = Service(
        BrokerAddress(mosquitto.host, mosquitto.port), ServeOptions(tmp_path / "blobs", TOPICS)
    ).start()
    greedy, modest = RawDevice(mosquitto, "greedy"), RawDevice(mosquitto, "modest")
    try:
        greedy.ask(ChunkRequest(sha256=spec.sha256, chunks=tuple(range(1024))).encode())
        modest.ask(ChunkRequest(sha256=spec.sha256, chunks=tuple(range(8))).encode())
        modest.wait_for(8)
        served_greedy_then = len(greedy.got)
        assert len(greedy.wait_for(1024, timeout=60)) == 1024
    finally:
        service.stop()
        greedy.close()
        modest.close()
    # The modest device's 8 chunks came while the greedy one still waited for most of its own.
    assert served_greedy_then < 1024 - 8, served_greedy_then
    assert {int(m.topic.rsplit("/", 1)[1]) for m in greedy.got} == set(range(1024))


def test_the_fleet_state_is_published_retained_and_decodes(service, mosquitto, cloud) -> None:  # type: ignore[no-untyped-def]
    status = b'{"state": "online", "model": {"name": "digits-cnn", "version": "1.0.0"}}'
    cloud.publish(TOPICS.status("cam-7"), status, qos=1, retain=True).wait_for_publish(10)
    telemetry = b'{"at": 1700000000.5, "frames_per_second": 12.5, "cpu_ratio": 0.4}'
    cloud.publish(TOPICS.telemetry("cam-7"), telemetry, qos=1, retain=True).wait_for_publish(10)
    states: list[dict[str, object]] = []
    cond = threading.Condition()

    def on_state(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with cond:
            states.append(FleetState.decode(bytes(message.payload)))
            cond.notify_all()

    watcher = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    watcher.message_callback_add(TOPICS.fleet_state(), on_state)
    Subscriber(watcher).subscribe([(TOPICS.fleet_state(), 1)])

    def complete() -> bool:
        devices = states[-1]["devices"] if states else {}
        return _get(devices, "cam-7", "fps") == 12.5

    try:
        with cond:
            assert cond.wait_for(complete, 20), states
    finally:
        disconnect(watcher)
    assert states[-1]["devices"] == {
        "cam-7": {
            "state": "online",
            "model": "digits-cnn 1.0.0",
            "fps": 12.5,
            "cpu_percent": 40.0,
            "at": 1700000000.5,
        }
    }
    # What `edgewise fleet` shows from the summary alone (a broker that lost the statuses).
    view = FleetView(TOPICS, clock=lambda: 1700000010.5)
    view.update(TOPICS.fleet_state(), _encoded(states[-1]))
    (row,) = view.rows()
    assert row["device"] == "cam-7" and row["model"] == "digits-cnn 1.0.0" and row["age_s"] == 10.0


def _get(data: object, *path: str) -> object:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _encoded(state: dict[str, object]) -> bytes:
    import json

    return json.dumps(state).encode()


def test_fleet_state_decode_refuses_what_is_not_one() -> None:
    from agent.contract import PayloadError

    for payload in (b"[]", b'{"devices": [{"x": 1}]}', b'{"devices": {"a": 1}}', b"\xff"):
        with pytest.raises(PayloadError):
            FleetState.decode(payload)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_serve_command_answers_and_stops_cleanly(  # type: ignore[no-untyped-def]
    mosquitto, device, blob, stop
) -> None:
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "serve", "--blobs", str(blob[0]),
         "--host", mosquitto.host, "--port", str(mosquitto.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    started = proc.stdout.readline()
    assert started.startswith(f"serving 1 blobs from {blob[0]} on "), started
    device.ask(ChunkRequest(sha256=blob[1], chunks=(2,)).encode())
    got = device.wait_for(1)
    assert got[0].payload == chunk_of(blob[0], blob[1], 2)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.startswith("stopped: served 1 chunks (0.1 MB) for 1 requests; 0 bad requests")
    assert "Traceback" not in err


def test_serve_with_a_file_for_its_store_is_one_line_exit_2(mosquitto, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("x")
    run = subprocess.run(
        [str(BIN / "edgewise"), "serve", "--blobs", str(tmp_path / "file"),
         "--host", mosquitto.host, "--port", str(mosquitto.port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr == f"edgewise: --blobs {tmp_path / 'file'} is a file, not a folder\n"


def test_the_store_serves_what_a_request_push_put_there(tmp_path: Path) -> None:
    data = os.urandom(3 * 1000 + 7)
    (tmp_path / "m.onnx").write_bytes(data)
    spec = describe_blob(tmp_path / "m.onnx", 1000)
    store = BlobStore(tmp_path / "s")
    store.put(spec, tmp_path / "m.onnx")
    assert [s.sha256 for s in store.specs()] == [spec.sha256]
    assert store.read_chunk(spec.sha256, 3) == data[3000:]
    assert store.read_chunk(spec.sha256, 4) is None and store.read_chunk("f" * 64, 0) is None
    assert (
        hashlib.sha256(
            b"".join(store.read_chunk(spec.sha256, i) or b"" for i in range(4))
        ).hexdigest()
        == spec.sha256
    )
    store.close()


def test_a_request_push_then_serve_delivers_the_whole_model(  # type: ignore[no-untyped-def]
    mosquitto, cloud, device, compiled, signing_keys, tmp_path
) -> None:
    from compiler.fleet.delivery import DeliveryChoice, plan_blobs
    from compiler.fleet.mqtt import capabilities
    from compiler.fleet.push import push_package

    package, store = compiled.package, BlobStore(tmp_path / "store")
    choice = DeliveryChoice("request", store=store.root)
    specs = plan_blobs(package, choice, capabilities(cloud), TOPICS, signed=True)
    store.put_package(package, specs)
    push_package(
        cloud, TOPICS, package, "device:cam-1", signing_key=signing_keys[0],
        delivery="request", specs=specs,
    )  # fmt: skip
    service = Service(
        BrokerAddress(mosquitto.host, mosquitto.port), ServeOptions(store.root, TOPICS)
    ).start()
    try:
        model = package.manifest.model
        device.ask(
            ChunkRequest(sha256=model.sha256, chunks=tuple(range(len(model.chunks)))).encode()
        )
        got = device.wait_for(len(model.chunks))
    finally:
        service.stop()
    by_index = {int(m.topic.rsplit("/", 1)[1]): bytes(m.payload) for m in got}
    whole = b"".join(by_index[i] for i in range(len(model.chunks)))
    assert hashlib.sha256(whole).hexdigest() == model.sha256
    assert [hashlib.sha256(by_index[i]).hexdigest() for i in sorted(by_index)] == list(model.chunks)


def test_the_acl_lets_a_device_ask_on_its_own_wants_and_read_its_own_inbox() -> None:
    from compiler.fleet.certs import acl

    text = acl({"cam-1": ["lobby"]}, TOPICS)
    patterns = [line for line in text.splitlines() if line.startswith("pattern ")]
    assert "pattern write edgewise/v1/devices/%u/wants" in patterns
    assert "pattern read edgewise/v1/devices/%u/inbox/#" in patterns
    # Only its own (%u): no line grants wants or an inbox by name or wildcard.
    granted = [line for line in text.splitlines() if "wants" in line or "inbox" in line]
    assert granted == [
        "pattern write edgewise/v1/devices/%u/wants",
        "pattern read edgewise/v1/devices/%u/inbox/#",
    ]


def test_shared_serve_processes_split_the_requests(mosquitto, device, blob) -> None:  # type: ignore[no-untyped-def]
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    pair = [Service(address, ServeOptions(blob[0], TOPICS, shared=True)).start() for _ in range(2)]
    try:
        assert all(s.subscription.startswith("$share/edgewise-serve/") for s in pair)
        for index in range(4):
            device.ask(ChunkRequest(sha256=blob[1], chunks=(index,)).encode())
        got = device.wait_for(4)
    finally:
        for service in pair:
            service.stop()
    assert sorted(int(m.topic.rsplit("/", 1)[1]) for m in got) == [0, 1, 2, 3]
    # Each request reached one of them (without --shared both would answer all four).
    assert sum(s.counters.requests for s in pair) == 4
    assert sum(s.counters.chunks for s in pair) == 4
