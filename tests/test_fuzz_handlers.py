"""Issue 12, in process: every topic handler of the agent fed hostile payloads — the deployer's
(deploy scopes: device, group, fleet-wide), the fetcher's (chunk topics, through real downloads)
and the ``mqtt:`` sensor source's — by the seeded corpus (tests/hostile.py; three more seeds
under ``slow``) and by hypothesis (derandomized; a few thousand examples by default, ten times
more under ``slow``).

For each payload: no exception escapes, the handling thread stays alive, every event it reports
is strict JSON of at most 2,048 bytes whose reason is at most 256 characters and does not quote
the payload; after the corpus a valid deployment still installs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from forge import package_from, sign_raw
from hostile import Payload, Scene, corpus, subset
from hostile_models import classifier_package
from hostile_rig import DEVICE, GROUPS, TOPICS, Crashes, Rig
from hostile_signed import body
from hostile_strategies import deploy_payloads, hostile_chunk, sensor_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import MqttConfig, SensorConfig
from agent.contract import describe_blob, generate_keypair
from agent.sources.sensors import SensorSource, parse_sample
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.push import publish_blobs

FUZZ = settings(
    derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
LONG = 10  # the slow variants run this many times the examples


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    started = MosquittoBroker().start()
    yield started
    started.close()


@pytest.fixture(scope="module")
def cloud(broker: MosquittoBroker) -> Iterator[mqtt.Client]:
    client = connect(BrokerAddress(broker.host, broker.port))
    yield client
    disconnect(client)


@pytest.fixture(scope="module")
def crashes() -> Iterator[Crashes]:
    """Thread deaths and the errors a boundary logs, for the whole module."""
    found, previous = Crashes(), threading.excepthook
    threading.excepthook = found.hook
    handler = logging.Handler(logging.ERROR)
    handler.emit = found.emit  # type: ignore[method-assign]
    logging.getLogger("agent").addHandler(handler)
    yield found
    logging.getLogger("agent").removeHandler(handler)
    threading.excepthook = previous


@pytest.fixture(scope="module")
def scene(tmp_path_factory, cloud) -> Scene:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fuzz")
    generate_keypair(root / "signing.key", root / "signing.pub")
    package = classifier_package(root / "pkg", root / "signing.key")
    publish_blobs(cloud, TOPICS, package, timeout=30)  # a re-signed served manifest downloads
    return Scene(TOPICS, DEVICE, GROUPS, root / "signing.key", package, root / "forged")


class Rigs:
    """The deployer under test; a fresh one when the last died (so one death is one failure)."""

    def __init__(self, broker: MosquittoBroker, cloud, scene: Scene):  # type: ignore[no-untyped-def]
        self._args, self._scene, self._count = (broker, cloud), scene, 0
        self._rig: Rig | None = None

    def live(self) -> Rig:
        if self._rig is None or not self._rig.alive:
            if self._rig is not None:
                self._rig.close()
            self._count += 1
            work = self._scene.work.parent / f"rig-{self._count}"
            pub = self._scene.key.with_suffix(".pub")
            self._rig = Rig(*self._args, work, self._scene.base, pub)  # type: ignore[arg-type]
        return self._rig

    def close(self) -> None:
        if self._rig is not None:
            self._rig.close()


@pytest.fixture(scope="module")
def rigs(broker, cloud, scene, crashes) -> Iterator[Rigs]:  # type: ignore[no-untyped-def]
    made = Rigs(broker, cloud, scene)
    yield made
    made.close()


def valid_after(rig: Rig, scene: Scene, version: str) -> list[str]:
    """Push a valid newer package; what went wrong (empty: it went active)."""
    package = package_from(scene.base, scene.work / version, scene.key, version=version)
    publish_blobs(rig.cloud, TOPICS, package, timeout=30)
    seen = len(rig.events)
    problems = rig.feed(Payload("valid", TOPICS.deploy_device(DEVICE), package.envelope))
    states = [e.get("state") for e in rig.events[seen:] if e.get("type") == "deployment"]
    if "active" not in states:
        problems.append(f"valid {version} did not go active: {states} {rig.events[seen:][-1:]}")
    return problems


def feed_corpus(
    rigs: Rigs, scene: Scene, payloads: list[Payload], crashes: Crashes, seed: int = 12
) -> None:
    failures: dict[str, list[str]] = {}
    for payload in payloads:
        threads = len(crashes.threads)
        try:
            problems = rigs.live().feed(payload)
        except Exception as exc:  # the handler's entry itself raised
            problems = [f"submit raised {type(exc).__name__}: {str(exc)[:120]}"]
        problems += crashes.threads[threads:]
        if problems:
            failures.setdefault(payload.kind, []).append(f"{payload.label}: {'; '.join(problems)}")
    failures_after = valid_after(rigs.live(), scene, f"2.0.{seed}")  # newer with every seed
    if failures_after:
        failures["valid-after"] = failures_after
    lines = [f"{kind}: {len(items)} payloads, e.g. {items[0][:300]}" for kind, items in
             sorted(failures.items())]  # fmt: skip
    if crashes.logged:
        print(f"boundary caught {len(crashes.logged)} unexpected errors, e.g. {crashes.logged[:3]}")
    assert not failures, "\n".join(lines)


def deploy_corpus(scene: Scene, seed: int = 12) -> list[Payload]:
    return [p for p in corpus(scene, seed) if not p.kind.startswith("sensor:")]


def test_corpus_in_process(rigs, scene, crashes) -> None:  # type: ignore[no-untyped-def]
    payloads = deploy_corpus(scene)
    assert len(payloads) >= 2000
    feed_corpus(rigs, scene, payloads, crashes)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [13, 14, 15])
def test_corpus_of_other_seeds_in_process(rigs, scene, crashes, seed: int) -> None:  # type: ignore[no-untyped-def]
    feed_corpus(rigs, scene, deploy_corpus(scene, seed), crashes, seed)


def fuzz_deployer(rigs: Rigs, scene: Scene, examples: int) -> None:
    strategy = deploy_payloads(scene.base.envelope, scene.key_id, scene.key)

    @settings(FUZZ, max_examples=examples)
    @given(data=strategy, scope=st.sampled_from(scene.deploy_topics))
    def handled(data: bytes, scope: str) -> None:
        problems = rigs.live().feed(Payload("fuzz", scope, data), timeout=60)
        assert not problems, problems

    handled()


def test_deployer_handler_fuzz(rigs, scene) -> None:  # type: ignore[no-untyped-def]
    fuzz_deployer(rigs, scene, 3000)


@pytest.mark.slow
def test_deployer_handler_fuzz_long(rigs, scene) -> None:  # type: ignore[no-untyped-def]
    fuzz_deployer(rigs, scene, 3000 * LONG)


def fuzz_fetcher(rigs: Rigs, scene: Scene, examples: int) -> None:
    """A download of a fresh 3-chunk blob with hostile bytes on some of its chunk topics."""
    counter = iter(range(1, 10**9))

    @settings(FUZZ, max_examples=examples)
    @given(st.data())
    def download(data: st.DataObject) -> None:
        n = next(counter)
        blob_bytes = np.random.default_rng(n).bytes(3 * 1024)
        path = scene.work / "blobs" / f"{n}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob_bytes)
        blob = describe_blob(path, 1024)
        rig = rigs.live()
        bad = data.draw(st.sets(st.integers(0, 2), min_size=1), label="hostile indices")
        for i in range(3):
            real = blob_bytes[i * 1024 : (i + 1) * 1024]
            chunk = data.draw(hostile_chunk(real), label=f"chunk {i}") if i in bad else real
            rig.publish(TOPICS.blob_chunk(blob.sha256, i), chunk)
        manifest = sign_raw(body(scene, version=f"3.0.{n}", model=blob.model_dump(mode="json")),
                            scene.key)  # fmt: skip
        problems = rig.feed(Payload("chunk:fuzz", TOPICS.deploy_device(DEVICE), manifest))
        partial = rig.store.partial_path(blob)
        if partial.exists():
            problems.append(f"refused download left {partial.stat().st_size} bytes in incoming/")
        problems += rig.feed(Payload("withdraw", TOPICS.deploy_device(DEVICE), b""))
        assert not problems, problems

    download()


def test_fetcher_chunk_handler_fuzz(rigs, scene) -> None:  # type: ignore[no-untyped-def]
    fuzz_fetcher(rigs, scene, 40)


@pytest.mark.slow
def test_fetcher_chunk_handler_fuzz_long(rigs, scene) -> None:  # type: ignore[no-untyped-def]
    fuzz_fetcher(rigs, scene, 40 * LONG)


def check_sample(text: str, fmt: str) -> None:
    values = parse_sample(text, fmt)
    assert values is None or (values and all(np.isfinite(v) for v in values)), values


@settings(FUZZ, max_examples=3000)
@given(message=sensor_messages(), fmt=st.sampled_from(["csv", "json"]))
def test_sensor_parse_sample_fuzz(message: bytes, fmt: str) -> None:
    check_sample(message.decode("utf-8", "replace"), fmt)


@pytest.fixture(scope="module")
def sensor(broker) -> Iterator[tuple[SensorSource, str]]:  # type: ignore[no-untyped-def]
    topic = "fuzz/sensor"
    config = SensorConfig(kind="sensor", uri=f"mqtt:{topic}", format="json")
    source = SensorSource(config, MqttConfig(host=broker.host, port=broker.port))
    source.open()
    yield source, topic
    source.close()


def next_window(source: SensorSource, timeout: float) -> np.ndarray | None:
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        frame = source.read(stop)
    finally:
        timer.cancel()
    return None if frame is None else frame.image


def fuzz_sensor(sensor: tuple[SensorSource, str], cloud, scene: Scene, examples: int) -> None:  # type: ignore[no-untyped-def]
    """Each hostile message, then a good sample: the source must still deliver it."""
    source, topic = sensor
    counter = iter(range(1, 10**9))
    seeded = [p.data for p in subset([p for p in corpus(scene) if p.kind.startswith("sensor:")], 8)]

    @settings(FUZZ, max_examples=examples)
    @given(message=sensor_messages() | st.sampled_from(seeded))
    def sampled(message: bytes) -> None:
        sentinel = next(counter)
        cloud.publish(topic, message, qos=1).wait_for_publish(10)
        cloud.publish(topic, f"[{sentinel},-1]".encode(), qos=1).wait_for_publish(10)
        while True:
            window = next_window(source, 10)
            assert window is not None, "the sensor source stopped delivering windows"
            assert np.isfinite(window).all() and window.shape == (1, 2), window
            if window[0, 0] == sentinel:
                return

    cloud.publish(topic, b"[0,0]", qos=1).wait_for_publish(10)  # two channels from now on
    assert next_window(source, 10) is not None
    sampled()


def test_sensor_mqtt_handler_fuzz(sensor, cloud, scene) -> None:  # type: ignore[no-untyped-def]
    fuzz_sensor(sensor, cloud, scene, 300)


@pytest.mark.slow
def test_sensor_mqtt_handler_fuzz_long(sensor, cloud, scene) -> None:  # type: ignore[no-untyped-def]
    fuzz_sensor(sensor, cloud, scene, 300 * LONG)
