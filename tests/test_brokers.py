"""The product on other brokers than Mosquitto: RabbitMQ 3.10 (its MQTT plugin) and NATS 2.9 (its
MQTT listener), each a private instance (tests/brokers.py). The real agent gets a package pushed
with ``edgewise push --chunks request`` from a running ``edgewise serve`` (retained chunks on
Mosquitto too, with ``push --wait``'s clean-up), installs and serves it, and its results go through
``edgewise results --postgres`` into PostgreSQL: every result the agent says it produced is a
row, once. On a three-node NATS cluster the node the agent is on is SIGKILLed mid-transfer (a
request push): the agent fails over, asks again on the node it reaches, finishes the install and
nothing is lost.

NATS 2.9.10 drops QoS 1 messages it has acknowledged when two MQTT QoS 1 subscriptions take the
same message from the replicated (``stream_replicas`` 3) ``$MQTT_msgs`` stream, whatever the agent
does, with or without a node killed. Traced here (nats-server ``trace``): result 59 went to node 1
in a batch stored as stream message 19 and acknowledged 0.93 s before node 1 was killed (the PUBACK
follows the stream's own ack: 2.9.10's ``mqttProcessPub`` waits for ``storeMsg``); the watcher's
JetStream consumer got stream messages 19 and 20, the PostgreSQL consumer's (its leader on node 1)
went from 18 to 21 and never had them. Only the agent's settle window (a batch acknowledged within
3 s of a lost connection is sent again) brought results 59 and 60 to PostgreSQL, 16.6 s after the
kill; a deletion more than 3 s before the kill, or after the failover, loses results for good (the
"715 of 725 rows" failures, about one run in five). The likely path, from 2.9.10's source: the
stream has interest retention and every MQTT subscription is a filtered consumer; when one
consumer's ack reaches a replica that has not stored the message yet, ``stream.ackMsg`` asks the
others whether they need it, ``consumer.needAck`` cannot load it there and says no, and the
replica proposes the message's deletion to the whole stream (``ackMsg``'s ``ErrStoreEOF`` branch;
nats-server 71af150, in 2.9.16, reworks this "acks arrive before the actual msgs" case). So the
cluster test's watcher (``serving``, the deployment events) subscribes at QoS 0, which NATS serves
without a JetStream consumer: the PostgreSQL consumer is the only QoS 1 subscriber to the results,
and every result must still reach it, once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from broker_flow import ServeProcess, push, retained_blob_topics, start_agent
from brokers import NatsCluster, running
from device_harness import DEPLOY, DEVICE, TOPICS, Device
from forge import golden_of, package_from
from helpers import BIN
from onnx_models import wide_model
from upstream_harness import wait_until

from agent.contract import Package
from agent.delivery.fetcher import chunks_on_disk
from agent.delivery.store import ModelStore
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.results import DeviceFeed

AGENT_CLIENT_ID = f"edgewise-agent-{DEVICE}"


class ResultsConsumer:
    """``edgewise results --postgres`` as a process on one broker node."""

    def __init__(self, host: str, port: int, dsn: str):
        self.dsn = dsn
        self.proc = subprocess.Popen(
            [str(BIN / "edgewise"), "results", "--host", host, "--port", str(port),
             "--postgres", dsn, "--timeout", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert line.startswith("listening on "), line + self.proc.stderr.read()

    def rows(self) -> list[tuple[str, int, str]]:
        with psycopg.connect(self.dsn) as conn:
            return list(conn.execute("SELECT id, seq, model_version FROM results ORDER BY seq"))

    def stop(self) -> str:
        """Ctrl-C: the consumer exits 130 with its summary."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 130, err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def lost(consumer: ResultsConsumer, produced: int) -> list[int]:
    return sorted(set(range(1, produced + 1)) - {seq for _, seq, _ in consumer.rows()})[:20]


def stop_and_account(device: Device, consumer: ResultsConsumer, versions: set[str]) -> int:
    """Stop the agent; every result it says it produced reaches PostgreSQL, once, and nothing
    else does. Returns how many."""
    assert device.agent.stop() == 0, device.agent.output()[-3000:]
    assert "stay in the outbox" not in device.agent.output()
    produced = device.agent.results_produced()
    assert produced > 0
    wait_until(
        lambda: len(consumer.rows()) >= produced, 60,
        lambda: f"{len(consumer.rows())} of {produced} rows, lost {lost(consumer, produced)}\n"
        + device.agent.output()[-2000:],
    )  # fmt: skip
    summary = consumer.stop()
    rows = consumer.rows()
    seqs = [seq for _, seq, _ in rows]
    assert seqs == list(range(1, produced + 1)), (
        f"lost: {sorted(set(range(1, produced + 1)) - set(seqs))[:20]}, "
        f"unexpected: {sorted(set(seqs) - set(range(1, produced + 1)))[:20]}"
    )
    assert len({rid for rid, _, _ in rows}) == produced
    assert {v for _, _, v in rows} == versions
    assert f"{produced} results" in summary, summary
    return produced


class WatchingFeed(DeviceFeed):
    """A :class:`DeviceFeed` that subscribes at QoS 0: on NATS a watcher with no JetStream
    consumer of its own, so it cannot take a message from the QoS 1 consumer (module docstring)."""

    def _subscribe(self) -> None:
        with self._lock:
            _, mid = self._client.subscribe([(f, 0) for f in self.filters])
            if mid is not None:
                self._mids.add(mid)


class Cloud:
    """Everything on the cloud's side of one broker node: ``edgewise serve`` (request mode), the
    PostgreSQL consumer, and a client watching the device's results and events (at QoS 0 with
    ``watch_qos0``)."""

    def __init__(
        self, host: str, port: int, dsn: str, store: Path, serve: bool, watch_qos0: bool = False
    ):
        self.host, self.port, self.store = host, port, store
        self.serve = ServeProcess(host, port, store) if serve else None
        self.consumer = ResultsConsumer(host, port, dsn)
        self.client = connect(BrokerAddress(host, port))
        feed = WatchingFeed if watch_qos0 else DeviceFeed
        self.feed = feed(self.client, TOPICS, DEVICE)

    def close(self) -> None:
        if self.serve is not None:
            self.serve.kill()
        self.consumer.kill()
        disconnect(self.client)


def device_on(broker, cloud: Cloud, compiled, signing_keys, video, tmp_path, deploy: str) -> Device:  # type: ignore[no-untyped-def]
    agent = start_agent(broker, compiled.package, signing_keys[1], video, tmp_path, deploy)
    return Device(agent, cloud.feed, tmp_path / "agent.toml", tmp_path / "state")


def switched_to(device: Device, version: str) -> None:
    """Results of ``version`` come, and only those from then on."""
    wait_until(lambda: version in device.serving(1), 30, device.agent.output)
    assert device.serving() == {version}


def chunk_topics(package: Package) -> dict[str, int]:
    return {blob.sha256: len(blob.chunks) for blob in package.manifest.blobs}


def cleaned_up(mode: str, v1: Package, v2: Package) -> str:
    """push --wait's gc line: retained, v1's chunks go and v2's (in use) stay; request, none
    was ever retained."""
    if mode != "retained":
        return "removed 0 chunk topics of 0 blobs; kept 0 blobs in use"
    old = {sha: n for sha, n in chunk_topics(v1).items() if sha not in chunk_topics(v2)}
    assert old, "v1 and v2 share every blob: nothing for gc to clear"
    return (
        f"removed {sum(old.values())} chunk topics of {len(old)} blobs; "
        f"kept {len(chunk_topics(v2))} blobs in use"
    )


@pytest.mark.parametrize(
    ("make", "mode"),
    [("mosquitto", "request"), ("rabbitmq", "request"), ("nats", "request"),
     ("mosquitto", "retained")],
)  # fmt: skip
def test_push_install_serve_and_every_result_into_postgres_once(  # type: ignore[no-untyped-def]
    make, mode, compiled, v2, signing_keys, video, tmp_path, pg
) -> None:
    with running(make, tmp_path) as broker:
        cloud = Cloud(broker.host, broker.mqtt_port, pg, tmp_path / "blobs", mode == "request")
        device = device_on(broker, cloud, compiled, signing_keys, video, tmp_path, DEPLOY)
        try:
            assert device.serving() == {"1.0.0"}
            if mode == "retained":  # v1's chunks on the broker: what the clean-up must clear
                push(compiled.package, broker.host, broker.mqtt_port)
            run = push(
                v2, broker.host, broker.mqtt_port, mode, wait=90,
                key=signing_keys[0] if mode == "request" else None,
                store=cloud.store if mode == "request" else None,
            )  # fmt: skip
            assert run.returncode == 0, run.stdout + run.stderr + device.agent.output()[-3000:]
            lines = run.stdout.splitlines()
            assert f"{DEVICE}: active" in lines, run.stdout
            gc_line = (
                f"gc after digits-cnn 1.1.0 went active: {cleaned_up(mode, compiled.package, v2)}"
            )
            assert lines[-1] == gc_line, run.stdout
            installed = device.deployment("installed", timeout=10)
            assert installed["delivery"] == mode
            assert installed["chunks"]["fetched"] == sum(chunk_topics(v2).values())
            switched_to(device, "1.1.0")
            stop_and_account(device, cloud.consumer, {"1.0.0", "1.1.0"})
            if mode == "request":
                assert cloud.serve is not None
                cloud.serve.stop()
                assert cloud.serve.served is not None
                assert cloud.serve.served >= sum(chunk_topics(v2).values())
            left = retained_blob_topics(broker.host, broker.mqtt_port)
            if make != "rabbitmq":  # RabbitMQ gives no retained messages to wildcards: no count
                expected = chunk_topics(v2) if mode == "retained" else {}
                assert {sha: len(t) for sha, t in left.items()} == expected
        finally:
            device.agent.stop()
            cloud.close()


@pytest.fixture(scope="module")
def wide(compiled, signing_keys, tmp_path_factory) -> Package:  # type: ignore[no-untyped-def]
    """digits-cnn 3.0.0: a 3 MB random-weight model in 16 KiB chunks (190 of them)."""
    root = tmp_path_factory.mktemp("wide")
    model = wide_model(root / "wide.onnx", hidden=1000)
    golden = golden_of(compiled.package, model)
    return package_from(
        compiled.package, root / "p", signing_keys[0], version="3.0.0", model=model,
        golden=golden, chunk_size=16 * 1024,
    )  # fmt: skip


# One chunk asked for at a time: the transfer is ~190 round trips, so a node dies in the middle.
SLOW_DEPLOY = DEPLOY.replace("fetch_timeout = 4", "fetch_timeout = 30") + "chunk_window = 1\n"


def test_nats_cluster_node_killed_mid_transfer_agent_fails_over_and_loses_nothing(  # type: ignore[no-untyped-def]
    compiled, wide, signing_keys, video, tmp_path, pg
) -> None:
    with NatsCluster(tmp_path, nodes=3) as cluster:
        last = len(cluster.nodes) - 1  # the cloud's node: serve, push, consumer, feed
        port = cluster.nodes[last].mqtt_port
        # The watcher at QoS 0: a second QoS 1 subscriber makes NATS 2.9 drop results.
        cloud = Cloud(cluster.host, port, pg, tmp_path / "blobs", serve=True, watch_qos0=True)
        device = device_on(cluster, cloud, compiled, signing_keys, video, tmp_path, SLOW_DEPLOY)
        try:
            assert device.serving() == {"1.0.0"}
            wait_until(lambda: cluster.node_of(AGENT_CLIENT_ID) != [], 10)
            (on,) = cluster.node_of(AGENT_CLIENT_ID)
            assert on != last, "the agent is on the cloud's node"
            run = push(wide, cluster.host, port, "request", key=signing_keys[0], store=cloud.store)
            assert run.returncode == 0, run.stdout + run.stderr
            blob = wide.manifest.model
            partial, total = ModelStore(device.state).partial_path(blob), len(blob.chunks)

            def on_disk() -> int:
                return len(chunks_on_disk(partial, blob)) if partial.exists() else 0

            wait_until(lambda: on_disk() >= total // 5, 60, lambda: f"{on_disk()}/{total}")
            cluster.kill(on)
            killed, at_kill = time.time(), on_disk()
            assert at_kill < total, "the transfer ended before the node was killed"
            verdict = device.feed.wait_for(
                "events", 45,
                lambda e: e.get("type") == "deployment" and e["state"] in ("installed", "rejected"),
            )  # fmt: skip
            assert verdict is not None, device.agent.output()[-3000:]
            assert verdict["state"] == "installed", (verdict, device.agent.output()[-3000:])
            assert verdict["delivery"] == "request"
            fetched = verdict["chunks"]["fetched"] + verdict["chunks"]["resumed"]
            assert fetched == sum(chunk_topics(wide).values())  # model and golden inputs
            device.deployment("active", timeout=30)
            now = cluster.node_of(AGENT_CLIENT_ID)
            assert now and on not in now, now
            log = device.agent.output()
            assert f"connected to 127.0.0.1:{cluster.nodes[now[0]].mqtt_port}" in log
            switched_to(device, "3.0.0")
            stop_and_account(device, cloud.consumer, {"1.0.0", "3.0.0"})
            assert cloud.serve is not None
            cloud.serve.stop()
            assert cloud.serve.served is not None and cloud.serve.served >= fetched
            print(f"killed at {at_kill}/{total}; installed {verdict['at'] - killed:.1f} s after")
        finally:
            device.agent.stop()
            cloud.close()


def test_harness_brokers_come_up_on_free_ports_and_go_away(tmp_path: Path) -> None:
    """Each make answers MQTT on its own port, reports its memory, and leaves no process."""
    from brokers import MAKES, connack

    for make in MAKES:
        started = time.monotonic()
        with running(make, tmp_path) as broker:
            assert time.monotonic() - started < 30, make
            ports = [int(u.rsplit(":", 1)[1]) for u in broker.urls]
            assert all(connack(broker.host, p) == 0 for p in ports), make
            assert broker.rss_bytes() > 1_000_000, make
        assert all(connack(broker.host, p) is None for p in ports), make
