"""The product on several brokers: Mosquitto, RabbitMQ (MQTT plugin), NATS (MQTT listener) and a
three-node NATS cluster, each a private instance (tests/brokers.py). Per broker: push → serving
time and transfer MB/s for a 5 MB and a 100 MB random-weight ONNX model, the broker's RSS before
and after the pushes, results/s end to end into PostgreSQL (``edgewise results --postgres
--client-id``); on the cluster, the node the agent is on is SIGKILLed and what the agent
produced is accounted for in PostgreSQL.

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
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import psycopg
from postgres import postgres_figures  # bench/postgres.py: the consumer CLI against a broker
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from brokers import MAKES, NatsCluster, running
from device_harness import DEPLOY, DEVICE, TOPICS, Device
from forge import package_from
from onnx_models import wide_model
from upstream_harness import start_agent

from agent.contract import Package, generate_keypair
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
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


def packaged(base: Package, key: Path, root: Path, hidden: int, version: str) -> Package:
    model = wide_model(root / f"wide-{hidden}.onnx", hidden=hidden)
    inputs = np.load(base.root / "golden.npz")["inputs"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    golden = (inputs, session.run(None, {"input": inputs})[0])
    return package_from(base, root / version, key, version=version, model=model, golden=golden)


# --- delivery modes: one function each ---------------------------------------------------------


def deliver_retained(broker: Any, device: Device, package: Package) -> dict[str, float]:
    """``edgewise push`` (retained chunks, one per topic) to the device; returns push → active
    seconds and the transfer's seconds (the agent's own "downloading" → "verifying" events)."""
    started = time.monotonic()
    run = subprocess.run(
        [str(EDGEWISE), "push", str(package.root), "--to", f"device:{DEVICE}",
         "--host", broker.host, "--port", str(broker.mqtt_port)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
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


# TODO(modes): "request" (chunks on request, no retained blobs) and "http" (model.urls) are one
# function each with deliver_retained's signature; add them here and to MODES, and fill
# retained_blob_topics_after_gc (retained blob topics left on the broker after the agent's GC).
MODES: dict[str, Callable[[Any, Device, Package], dict[str, float]]] = {
    "retained": deliver_retained,
}


# --- the bench ----------------------------------------------------------------------------------


@contextmanager
def scratch_database(admin: str):  # type: ignore[no-untyped-def]
    name = f"edgewise_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def device_on(broker: Any, base: Package, keys: tuple[Path, Path], video: Path, root: Path):  # type: ignore[no-untyped-def]
    urls = broker.urls
    mqtt = "urls = [{}]\n".format(", ".join(f'"{u}"' for u in urls)) if len(urls) > 1 else ""
    compiled = SimpleNamespace(package=base)
    agent = start_agent(broker, compiled, keys, video, root, extra=EXTRA, mqtt=mqtt)
    cloud = connect(BrokerAddress(broker.host, int(urls[-1].rsplit(":", 1)[1])))
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    return Device(agent, feed, root / "agent.toml", root / "state"), cloud


def failover(cluster: NatsCluster, device: Device, dsn: str) -> dict[str, Any]:
    """Results stream into PostgreSQL through the last node while the agent's node is killed;
    then the agent stops and what it produced is counted against the rows."""
    last = cluster.nodes[-1]
    consumer = subprocess.Popen(
        [str(EDGEWISE), "results", "--port", str(last.mqtt_port), "--postgres", dsn,
         "--timeout", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert consumer.stderr is not None
    consumer.stderr.readline()
    device.serving(20, timeout=30)
    (on,) = cluster.node_of(AGENT_CLIENT_ID)
    killed = time.monotonic()
    cluster.kill(on)
    reconnect_s = None
    deadline = killed + 60
    while time.monotonic() < deadline:
        if [n for n in cluster.node_of(AGENT_CLIENT_ID) if n != on]:
            reconnect_s = time.monotonic() - killed
            break
        time.sleep(0.1)  # polling the survivors' /connz; there is no event to wait on
    served_after = reconnect_s is not None
    if served_after:
        device.serving(20, timeout=30)
    device.agent.stop()
    produced = device.agent.results_produced()

    def rows() -> int:
        with psycopg.connect(dsn) as conn:
            found = conn.execute("SELECT count(DISTINCT id) FROM results").fetchone()
        return int(found[0]) if found else 0

    deadline = time.monotonic() + 60
    while rows() < produced and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the database the consumer writes
    consumer.send_signal(signal.SIGINT)
    consumer.communicate(timeout=30)
    stored = rows()
    return {
        "ok": served_after and stored == produced,
        "lost": produced - stored,
        "reconnect_s": round(reconnect_s, 2) if reconnect_s is not None else None,
        "produced": produced,
    }


def bench_broker(make: str, ctx: SimpleNamespace, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False}
    with running(make, root) as broker:
        out["startup_s"] = round(broker.startup_s, 2)
        device, cloud = device_on(broker, ctx.base, ctx.keys, ctx.video, root)
        try:
            device.serving()
            out["rss_before_mb"] = round(broker.rss_bytes() / MB, 1)
            for label, package in ctx.packages:
                for mode, deliver in MODES.items():
                    figures = deliver(broker, device, package)
                    size = package.manifest.model.size / MB
                    out[f"{mode}_{label}_push_to_serving_s"] = round(
                        figures["push_to_serving_s"], 2
                    )
                    out[f"{mode}_{label}_mb_per_s"] = round(size / figures["transfer_s"], 1)
            out["rss_after_mb"] = round(broker.rss_bytes() / MB, 1)
            if isinstance(broker, NatsCluster):
                with scratch_database(ctx.dsn) as dsn:
                    out["failover"] = failover(broker, device, dsn)
            else:
                device.agent.stop()
            out["ok"] = True
        except Exception as exc:  # a broker that fails is a figure, not the end of the run
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            device.agent.stop()
            disconnect(cloud)
        try:
            pg = postgres_figures(broker, ctx.dsn, ctx.results, 100)
            out["postgres_results_per_s"] = round(pg["distinct"] / pg["seconds"], 1)
            out["postgres_lost"] = ctx.results - pg["distinct"]
        except Exception as exc:
            out["postgres_error"] = f"{type(exc).__name__}: {exc}"[:300]
            out["postgres_results_per_s"] = None
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the 5 MB model only")
    parser.add_argument("--brokers", default=",".join(MAKES))
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    args = parser.parse_args()
    makes = args.brokers.split(",")
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key, pub = root / "k", root / "k.pub"
        generate_keypair(key, pub)
        data = load_dataset("digits", seed=0)
        model = train_demo_model(data.train, PREPROCESS, epochs=1, progress=False)
        options = CompileOptions(
            name="digits-cnn", version="1.0.0", signing_key=key, out_dir=root / "v1",
            progress=False, html=False,
        )  # fmt: skip
        base = compile_model(SourceModel("eager", model), data, PREPROCESS, options).package
        packages = [("5mb", packaged(base, key, root, hidden=1600, version="2.0.0"))]
        if not args.quick:
            packages.append(("100mb", packaged(base, key, root, hidden=32000, version="3.0.0")))
        video = root / "digits.avi"
        write_digits_video(video, data.test, count=30)
        ctx = SimpleNamespace(
            base=base, keys=(key, pub), video=video, packages=packages, dsn=args.dsn,
            results=args.results,
        )  # fmt: skip
        for make in makes:
            work = root / make
            work.mkdir()
            figures[make] = bench_broker(make, ctx, work)
            print(f"{make}: {json.dumps(figures[make])}", file=sys.stderr, flush=True)
    sizes = [label for label, _ in packages]
    print(f"{'broker':<14}{'start s':>9}" + "".join(
        f"{f'{s} →srv s':>12}{f'{s} MB/s':>11}" for s in sizes
    ) + f"{'RSS MB before→after':>22}{'PG res/s':>10}  notes")  # fmt: skip
    for make, f in figures.items():
        cells = "".join(
            f"{f.get(f'retained_{s}_push_to_serving_s', '-')!s:>12}"
            f"{f.get(f'retained_{s}_mb_per_s', '-')!s:>11}"
            for s in sizes
        )
        rss = f"{f.get('rss_before_mb', '-')}→{f.get('rss_after_mb', '-')}"
        notes = f.get("error", "") or (f"failover {f['failover']}" if "failover" in f else "")
        print(
            f"{make:<14}{f.get('startup_s', '-')!s:>9}{cells}{rss:>22}"
            f"{f.get('postgres_results_per_s', '-')!s:>10}  {notes}"
        )
    print("(mode retained: 128 KiB chunks, 32 in flight; PG: edgewise results --client-id)")
    big = "100mb" if "100mb" in sizes else "5mb"
    summary: dict[str, Any] = {}
    for make, f in figures.items():
        key = make.replace("-", "_")
        summary[f"{key}_ok"] = f["ok"]
        summary[f"{key}_transfer_mb_per_s"] = f.get(f"retained_{big}_mb_per_s")
        summary[f"{key}_push_to_serving_s_5mb"] = f.get("retained_5mb_push_to_serving_s")
        summary[f"{key}_rss_before_mb"] = f.get("rss_before_mb")
        summary[f"{key}_rss_after_mb"] = f.get("rss_after_mb")
        summary[f"{key}_startup_s"] = f.get("startup_s")
        summary[f"{key}_postgres_results_per_s"] = f.get("postgres_results_per_s")
    cluster = figures.get("nats-cluster", {}).get("failover", {})
    summary["retained_blob_topics_after_gc"] = None  # TODO(modes): filled with the other modes
    summary["cluster_failover_ok"] = cluster.get("ok")
    summary["cluster_failover_lost"] = cluster.get("lost")
    summary["cluster_failover_reconnect_s"] = cluster.get("reconnect_s")
    rates = [
        f["postgres_results_per_s"] for f in figures.values() if f.get("postgres_results_per_s")
    ]
    summary["postgres_results_per_s"] = min(rates) if rates else None  # the slowest broker's
    summary["transfer_model"] = big
    print(json.dumps(summary))
    return 0 if all(f["ok"] for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
