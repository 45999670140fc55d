"""The product on several brokers: Mosquitto, RabbitMQ (MQTT plugin), NATS (MQTT listener) and a
three-node NATS cluster, each a private instance (tests/brokers.py). Per broker and chunk mode
(retained where exact-topic retained messages work, request everywhere, http once on Mosquitto):
push → serving time and transfer MB/s for a 5 MB and a 100 MB random-weight ONNX model; the
broker's RSS before and after the pushes and after ``edgewise gc``; on Mosquitto the retained blob
topics gc leaves after a retained v2 over a retained v1; results/s end to end into PostgreSQL
(``edgewise results --postgres --client-id``); on the cluster, a request push whose agent's node
is SIGKILLed mid-transfer, and what the agent produced accounted for in PostgreSQL.

    .venv/bin/python bench/brokers.py [--quick] [--brokers mosquitto,rabbitmq,...] [--dsn DSN]

``--quick``: the 5 MB model only. Prints a table, then the figures as one JSON object on the last
line.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
from postgres import postgres_figures  # bench/postgres.py: the consumer CLI against a broker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from broker_flow import ServeProcess, gc, port_of, push, retained_blob_topics, start_agent
from brokers import MAKES, NatsCluster, running
from device_harness import DEPLOY, DEVICE, TOPICS, Device
from forge import golden_of, package_from
from onnx_models import wide_model
from postgres_server import database
from range_server import RangeServer

from agent.contract import Package, generate_keypair
from agent.delivery.fetcher import chunks_on_disk
from agent.delivery.store import ModelStore
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.fleet.gc import collect
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.video import write_digits_video

MB = 1024 * 1024
EDGEWISE = Path(sys.executable).with_name("edgewise")
AGENT_CLIENT_ID = f"edgewise-agent-{DEVICE}"
EXTRA = (
    DEPLOY.replace("max_model_bytes = 8000000", "max_model_bytes = 500000000")
    .replace("probe_timeout = 8", "probe_timeout = 120")
    .replace("fetch_timeout = 4", "fetch_timeout = 30")
)
# Which modes each broker is measured in: retained wherever exact-topic retained messages work
# (not on the cluster, whose survivors lose some after a node dies), request everywhere, http
# once (the transfer does not touch the broker).
MODES_OF = {
    "mosquitto": ("retained", "request", "http"),
    "rabbitmq": ("retained", "request"),
    "nats": ("retained", "request"),
    "nats-cluster": ("request",),
}
VERSION_OF_MODE = {"retained": 0, "request": 1, "http": 2}


def packaged(
    base: Package, key: Path, root: Path, hidden: int, major: int, chunk_size: int | None = None
) -> dict[str, Package]:
    """One random-weight model packaged once per mode (``{major}.{n}.0``: each push is newer)."""
    root.mkdir(parents=True, exist_ok=True)
    model = wide_model(root / f"wide-{hidden}.onnx", hidden=hidden)
    golden = golden_of(base, model)
    return {
        mode: package_from(
            base,
            root / f"{major}.{n}.0",
            key,
            version=f"{major}.{n}.0",
            model=model,
            golden=golden,
            chunk_size=chunk_size,
        )
        for mode, n in VERSION_OF_MODE.items()
    }


class DirFiles(dict):  # type: ignore[type-arg]
    """RangeServer's files: BASE/<sha256> read from the folder ``push --chunks http`` fills."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def get(self, path: str, default: Any = None) -> Any:
        if path not in self and (self.folder / path).is_file() and "/" not in path:
            self[path] = (self.folder / path).read_bytes()
        return super().get(path, default)


# --- delivery modes: one function each ---------------------------------------------------------


def timed_push(device: Device, started: float, run: subprocess.CompletedProcess[str]) -> dict:
    """Push → active seconds and the transfer's seconds (the agent's own "downloading" →
    "verifying" events) of a push that ``run`` made."""
    if run.returncode != 0:
        raise RuntimeError(f"push failed: {run.stdout}{run.stderr}")
    begin = device.deployment("downloading", timeout=120)
    end = device.feed.wait_for(
        "events", 600,
        lambda e: e.get("type") == "deployment" and e["state"] in ("verifying", "rejected"),
    )  # fmt: skip
    if end is None or end["state"] != "verifying":
        raise RuntimeError(f"no transfer: {end}")
    device.deployment("active", timeout=300)
    return {"push_to_serving_s": time.monotonic() - started, "transfer_s": end["at"] - begin["at"]}


def cloud_port(broker: Any) -> int:
    """The node the cloud's side uses: the last (on a cluster, not the agent's first)."""
    return port_of(broker.urls[-1])


def deliver_retained(broker: Any, device: Device, package: Package, ctx: Any) -> dict:
    """``edgewise push`` (retained chunks, one per topic)."""
    started = time.monotonic()
    return timed_push(device, started, push(package, broker.host, cloud_port(broker)))


def deliver_request(broker: Any, device: Device, package: Package, ctx: Any) -> dict:
    """``edgewise push --chunks request``, answered by an ``edgewise serve`` running on the
    cloud's node (started before the clock)."""
    store = ctx.root / "request-blobs"
    serve = ServeProcess(broker.host, cloud_port(broker), store)
    try:
        started = time.monotonic()
        run = push(package, broker.host, cloud_port(broker), "request", key=ctx.key, store=store)
        return timed_push(device, started, run)
    finally:
        serve.kill()


def deliver_http(broker: Any, device: Device, package: Package, ctx: Any) -> dict:
    """``edgewise push --chunks http``: the agent reads Range requests from a local HTTP server
    serving the folder push writes (BASE/<sha256>)."""
    store = ctx.root / "http-blobs"
    store.mkdir(exist_ok=True)
    server = RangeServer({}).start()
    server.files = DirFiles(store)
    try:
        started = time.monotonic()
        run = push(
            package, broker.host, cloud_port(broker), "http", key=ctx.key, store=store,
            urls=(server.url("").rstrip("/"),),
        )  # fmt: skip
        return timed_push(device, started, run)
    finally:
        server.close()


MODES: dict[str, Callable[[Any, Device, Package, Any], dict[str, float]]] = {
    "retained": deliver_retained,
    "request": deliver_request,
    "http": deliver_http,
}


# --- the bench ----------------------------------------------------------------------------------


def device_on(broker: Any, ctx: SimpleNamespace, root: Path):  # type: ignore[no-untyped-def]
    """The real agent (default keepalive, every node's URL) and a cloud feed on the cloud node."""
    agent = start_agent(broker, ctx.base, ctx.keys[1], ctx.video, root, EXTRA)
    cloud = connect(BrokerAddress(broker.host, cloud_port(broker)))
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    return Device(agent, feed, root / "agent.toml", root / "state"), cloud


def poll(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)  # polling a file or a monitoring endpoint: no event to wait on
    return True


def rows_in(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT count(DISTINCT id) FROM results").fetchone()
    return int(found[0]) if found else 0


def missing_seqs(dsn: str, produced: int) -> list[int]:
    """Results of seq first..produced not in PostgreSQL, first being the first the consumer (which
    starts after the agent) stored."""
    with psycopg.connect(dsn) as conn:
        seqs = {int(r[0]) for r in conn.execute("SELECT DISTINCT seq FROM results")}
    return sorted(set(range(min(seqs), produced + 1)) - seqs) if seqs else list(range(produced))


def missing(dsn: str, produced: int) -> int:
    return len(missing_seqs(dsn, produced))


def first_seq(dsn: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT min(seq) FROM results").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def newest_seq(dsn: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT max(seq) FROM results").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def failover(cluster: NatsCluster, device: Device, ctx: SimpleNamespace, dsn: str) -> dict:
    """A request push (8 KiB chunks) to the agent; once 20% is on disk its node is SIGKILLed;
    then: did it install and serve, and is every result it produced in PostgreSQL, once?"""
    (on,) = cluster.node_of(AGENT_CLIENT_ID)
    if on == len(cluster.nodes) - 1:
        return {"ok": False, "error": "the agent is on the cloud's node; nothing to fail over"}
    cloud = port_of(cluster.urls[-1])
    # A persistent session (--client-id), as a consumer that must not miss results runs: NATS
    # keeps QoS 1 messages for it in JetStream, replicated, before it acknowledges the device.
    consumer = subprocess.Popen(
        [str(EDGEWISE), "results", "--port", str(cloud), "--postgres", dsn, "--timeout", "600",
         "--client-id", "bench-failover"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert consumer.stderr is not None
    consumer.stderr.readline()
    store = ctx.root / "failover-blobs"
    serve = ServeProcess(cluster.host, cloud, store)
    out: dict[str, Any] = {"ok": False}
    try:
        blob = ctx.failover.manifest.model
        partial, total = ModelStore(device.state).partial_path(blob), len(blob.chunks)

        def on_disk() -> int:
            return len(chunks_on_disk(partial, blob)) if partial.exists() else 0

        push(ctx.failover, cluster.host, cloud, "request", key=ctx.key, store=store)
        poll(lambda: on_disk() >= total // 5, 60)
        out["first_seq"] = first_seq(dsn)
        cluster.kill(on)
        killed, out["chunks_at_kill"] = time.time(), f"{on_disk()}/{total}"
        out["seq_stored_at_kill"] = newest_seq(dsn)
        verdict = device.feed.wait_for(
            "events", 60,
            lambda e: e.get("type") == "deployment" and e["state"] in ("active", "rejected"),
        )  # fmt: skip
        out["verdict"] = verdict["state"] if verdict else "none in 60 s"
        out["active_after_kill_s"] = round(verdict["at"] - killed, 1) if verdict else None
        served_after = verdict is not None and verdict["state"] == "active"
        if served_after:
            device.serving(20, timeout=30)
    finally:
        serve.kill()
        device.agent.stop()
    produced = device.agent.results_produced()
    poll(lambda: missing(dsn, produced) == 0, 60, every=0.2)
    consumer.send_signal(signal.SIGINT)
    consumer.communicate(timeout=30)
    gaps = missing_seqs(dsn, produced)
    lost, out["lost_seqs"] = len(gaps), gaps[:10]
    out.update(ok=served_after and lost == 0, lost=lost, produced=produced, stored=rows_in(dsn))
    return out


def gc_figures(broker: Any, ctx: SimpleNamespace) -> dict[str, Any]:
    """Retained v1 then retained v2 on a device of their own, then ``edgewise gc``: the retained
    blob topics of blobs no retained manifest references that are left (0 when gc works), and
    those kept for the manifests in use. Broker RSS after gc."""
    port, target = cloud_port(broker), "device:gc-probe"
    for package in (ctx.base, ctx.packages[0][1]["retained"]):
        run = push(package, broker.host, port, target=target)
        if run.returncode != 0:
            raise RuntimeError(f"push failed: {run.stdout}{run.stderr}")
    before = sum(len(t) for t in retained_blob_topics(broker.host, port).values())
    line = gc(broker.host, port).strip()
    client = connect(BrokerAddress(broker.host, port))
    try:
        inventory = collect(client, TOPICS)
    finally:
        disconnect(client)
    used = inventory.referenced()
    return {
        "retained_blob_topics_before_gc": before,
        "retained_blob_topics_after_gc": sum(
            len(t) for sha, t in inventory.chunks.items() if sha not in used
        ),
        "retained_blob_topics_in_use": sum(
            len(t) for sha, t in inventory.chunks.items() if sha in used
        ),
        "gc": line,
    }


def deliveries(make: str, broker: Any, device: Device, ctx: SimpleNamespace, out: dict) -> None:
    """Every package size in every mode of this broker; a mode that fails is a figure."""
    for label, by_mode in ctx.packages:
        for mode in MODES_OF[make]:
            package = by_mode[mode]
            try:
                figures = MODES[mode](broker, device, package, ctx)
            except Exception as exc:
                out[f"{mode}_{label}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            size = package.manifest.model.size / MB
            out[f"{mode}_{label}_push_to_serving_s"] = round(figures["push_to_serving_s"], 2)
            out[f"{mode}_{label}_mb_per_s"] = round(size / figures["transfer_s"], 1)


def bench_broker(make: str, ctx: SimpleNamespace, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False}
    with running(make, root) as broker:
        out["startup_s"] = round(broker.startup_s, 2)
        ctx.root = root
        device, cloud = device_on(broker, ctx, root)
        try:
            device.serving()
            out["rss_before_mb"] = round(broker.rss_bytes() / MB, 1)
            deliveries(make, broker, device, ctx, out)
            out["rss_after_mb"] = round(broker.rss_bytes() / MB, 1)
            if make == "mosquitto":
                out.update(gc_figures(broker, ctx))
            else:  # a refusal is a finding about the broker (NATS: ~64 MB of retained at most)
                try:
                    out["gc"] = gc(broker.host, cloud_port(broker)).strip()
                except RuntimeError as exc:
                    out["gc"] = f"failed: {str(exc).strip().splitlines()[-1][:160]}"
            out["rss_after_gc_mb"] = round(broker.rss_bytes() / MB, 1)
            if isinstance(broker, NatsCluster):
                with database(ctx.dsn) as dsn:
                    out["failover"] = failover(broker, device, ctx, dsn)
            failed_over = out.get("failover", {}).get("ok", True)
            out["ok"] = failed_over and not any(k.endswith("_error") for k in out)
        except Exception as exc:  # a broker that fails is a figure, not the end of the run
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            device.agent.stop()
            disconnect(cloud)
        out.update(results_figures(broker, ctx))
    return out


def results_figures(broker: Any, ctx: SimpleNamespace) -> dict[str, Any]:
    """Results/s through ``edgewise results --postgres --client-id`` on the cloud's node."""
    node = SimpleNamespace(host=broker.host, port=cloud_port(broker))
    try:
        pg = postgres_figures(node, ctx.dsn, ctx.results, 100)  # type: ignore[arg-type]
    except Exception as exc:
        return {
            "postgres_error": f"{type(exc).__name__}: {exc}"[:300],
            "postgres_results_per_s": None,
        }
    return {
        "postgres_results_per_s": round(pg["distinct"] / pg["seconds"], 1),
        "postgres_lost": ctx.results - pg["distinct"],
    }


def context(root: Path, args: argparse.Namespace) -> SimpleNamespace:
    key, pub = root / "k", root / "k.pub"
    generate_keypair(key, pub)
    data = load_dataset("digits", seed=0)
    model = train_demo_model(data.train, PREPROCESS, epochs=1, progress=False)
    options = CompileOptions(
        name="digits-cnn", version="1.0.0", signing_key=key, out_dir=root / "v1",
        progress=False, html=False,
    )  # fmt: skip
    base = compile_model(SourceModel("eager", model), data, PREPROCESS, options).package
    packages = [("5mb", packaged(base, key, root / "5mb", hidden=1600, major=2))]
    if not args.quick:
        packages.append(("100mb", packaged(base, key, root / "100mb", hidden=32000, major=3)))
    # The cluster's failover push: 5 MB in 8 KiB chunks, so it is mid-transfer for a while.
    failover_pkg = packaged(base, key, root / "fo", hidden=1600, major=9, chunk_size=8 * 1024)
    video = root / "digits.avi"
    write_digits_video(video, data.test, count=30)
    return SimpleNamespace(
        base=base, key=key, keys=(key, pub), video=video, packages=packages, dsn=args.dsn,
        results=args.results, failover=failover_pkg["request"], root=root,
    )  # fmt: skip


def table(figures: dict[str, dict[str, Any]], sizes: list[str]) -> None:
    head = "".join(f"{f'{s} →srv s':>12}{f'{s} MB/s':>11}" for s in sizes)
    print(f"{'broker':<14}{'mode':<10}{'start s':>9}{head}{'RSS MB before→after→gc':>26}"
          f"{'PG res/s':>10}  notes")  # fmt: skip
    for make, f in figures.items():
        for mode in MODES_OF.get(make, ()):
            cells = "".join(
                f"{f.get(f'{mode}_{s}_push_to_serving_s', '-')!s:>12}"
                f"{f.get(f'{mode}_{s}_mb_per_s', '-')!s:>11}"
                for s in sizes
            )
            rss = f"{f.get('rss_before_mb', '-')}→{f.get('rss_after_mb', '-')}→" + str(
                f.get("rss_after_gc_mb", "-")
            )
            errors = [f[k] for k in f if k.startswith(f"{mode}_") and k.endswith("_error")]
            notes = "; ".join(errors) or f.get("error", "")
            if mode == MODES_OF[make][-1] and "failover" in f:
                notes = f"failover {f['failover']}"
            print(
                f"{make:<14}{mode:<10}{f.get('startup_s', '-')!s:>9}{cells}{rss:>26}"
                f"{f.get('postgres_results_per_s', '-')!s:>10}  {notes}"
            )
    print("(retained/request: 128 KiB chunks, 32 in flight; http: Range GETs from a local server;"
          " PG: edgewise results --postgres --client-id)")  # fmt: skip


def summary(figures: dict[str, dict[str, Any]], sizes: list[str]) -> dict[str, Any]:
    big = "100mb" if "100mb" in sizes else "5mb"
    out: dict[str, Any] = {}
    for make, f in figures.items():
        key = make.replace("-", "_")
        out[f"{key}_ok"] = f["ok"]
        rates = {m: f.get(f"{m}_{big}_mb_per_s") for m in MODES_OF.get(make, ())}
        for mode, rate in rates.items():
            out[f"{key}_{mode}_transfer_mb_per_s"] = rate
        measured = {m: r for m, r in rates.items() if r is not None}
        best = max(measured, key=lambda m: measured[m]) if measured else None
        out[f"{key}_transfer_mb_per_s"] = measured.get(best) if best else None
        out[f"{key}_best_mode"] = best
        out[f"{key}_rss_before_mb"] = f.get("rss_before_mb")
        out[f"{key}_rss_after_mb"] = f.get("rss_after_mb")
        out[f"{key}_rss_after_gc_mb"] = f.get("rss_after_gc_mb")
        out[f"{key}_postgres_results_per_s"] = f.get("postgres_results_per_s")
    mosquitto = figures.get("mosquitto", {})
    out["retained_blob_topics_after_gc"] = mosquitto.get("retained_blob_topics_after_gc")
    out["retained_blob_topics_in_use_after_gc"] = mosquitto.get("retained_blob_topics_in_use")
    cluster = figures.get("nats-cluster", {}).get("failover", {})
    out["cluster_failover_ok"] = cluster.get("ok")
    out["cluster_failover_lost"] = cluster.get("lost")
    rates = [
        f["postgres_results_per_s"] for f in figures.values() if f.get("postgres_results_per_s")
    ]
    out["postgres_results_per_s"] = min(rates) if rates else None  # the slowest broker's
    out["transfer_model"] = big
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the 5 MB model only")
    parser.add_argument("--brokers", default=",".join(MAKES))
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    args = parser.parse_args()
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context(Path(tmp), args)
        for make in args.brokers.split(","):
            work = Path(tmp) / make
            work.mkdir()
            figures[make] = bench_broker(make, ctx, work)
            print(f"{make}: {json.dumps(figures[make])}", file=sys.stderr, flush=True)
    sizes = [label for label, _ in ctx.packages]
    table(figures, sizes)
    print(json.dumps(summary(figures, sizes)))
    return 0 if all(f["ok"] for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
