"""Upstream benchmark on a Mosquitto with default settings: results delivered end to end from one
agent uplink (outbox → batched QoS 1 with a PUBACK window) to one consumer in another process,
against the naive design (one QoS 1 publish per result straight into paho) in the same run; and
the cost of one outbox write.

    .venv/bin/python bench/outbox.py [--results N]

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as mqtt

from agent.comms.link import MqttLink
from agent.config import MqttConfig
from agent.contract import Topics
from agent.inference.postprocess import Prediction
from agent.sources import Frame
from agent.upstream.outbox import Outbox
from agent.upstream.results import ResultBuilder
from agent.upstream.uplink import ResultsUplink
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.results import Deduper, DeviceFeed

ROOT = Path(__file__).resolve().parents[1]
TOPICS = Topics()
CONSUMER = "bench-consumer"


def results(device: str, count: int) -> list[bytes]:
    """Payloads shaped exactly like the agent's (its own ResultBuilder), about 450 bytes each."""
    builder = ResultBuilder(device, "b00tb00tb00t", "video:///data/cam.mp4")
    session = SimpleNamespace(manifest=SimpleNamespace(name="digits-cnn", version="1.2.0"))
    image = np.zeros((1, 1, 3), np.uint8)
    out = []
    for i in range(count):
        top = [Prediction(str(i % 10), 0.91234), Prediction(str((i + 1) % 10), 0.04321)]
        inference = SimpleNamespace(
            top=top[0], predictions=top, preprocess_ms=0.05, inference_ms=0.09, postprocess_ms=0.01
        )
        out.append(builder.build(Frame(image, i, time.time()), session, inference))  # type: ignore[arg-type]
    return out


def consume(port: int, device: str, count: int, idle: float) -> None:
    """The consumer process: a persistent session (set up beforehand), dedupe by id; prints
    one JSON line with what it got."""
    client = connect(BrokerAddress("127.0.0.1", port), client_id=CONSUMER, clean_session=False)
    feed, dedupe = DeviceFeed(client, TOPICS, device), Deduper()
    print("ready", flush=True)
    seqs: list[int] = []
    last_at = 0.0
    for kind, message in feed.messages(idle):
        if kind == "results" and dedupe.first_time(message["id"]):
            seqs.append(message["seq"])
            last_at = time.time()
            if len(seqs) >= count:
                break
    disconnect(client)
    print(json.dumps({
        "unique": len(set(seqs)), "kept": len(seqs), "duplicates": dedupe.duplicates,
        "in_order": seqs == sorted(seqs), "last_at": last_at,
    }))  # fmt: skip


def start_consumer(broker: MosquittoBroker, device: str, count: int) -> subprocess.Popen[str]:
    # Subscribe once with a persistent session so nothing published from here on is missed,
    # whenever the consumer process finishes starting.
    address = BrokerAddress(broker.host, broker.port)
    setup = connect(address, client_id=CONSUMER, clean_session=False)
    done = threading.Event()
    setup.on_subscribe = lambda *_args: done.set()
    setup.subscribe(TOPICS.results(device), qos=1)
    done.wait(10)
    disconnect(setup)
    consumer = subprocess.Popen(
        [sys.executable, __file__, "--consume", str(broker.port), device, str(count)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert consumer.stdout is not None and consumer.stdout.readline().strip() == "ready"
    return consumer


def finish(consumer: subprocess.Popen[str], started: float, count: int) -> dict[str, float]:
    out, _ = consumer.communicate(timeout=600)
    got = json.loads(out.strip().splitlines()[-1])
    elapsed = got["last_at"] - started if got["unique"] else float("nan")
    return {
        "results": count,
        "received": got["unique"],
        "lost": count - got["unique"],
        "duplicates_after_dedupe": got["kept"] - got["unique"],
        "duplicates_dropped": got["duplicates"],
        "in_order": got["in_order"],
        "seconds": round(elapsed, 3),
        "results_per_s": round(got["unique"] / elapsed, 1) if got["unique"] else 0.0,
    }


def run_outbox(broker: MosquittoBroker, count: int, state: Path) -> dict[str, float]:
    device = "bench-outbox"
    payloads = results(device, count)
    consumer = start_consumer(broker, device, count)
    outbox = Outbox(state / "outbox.db", max_rows=10 * count, max_bytes=2**30)
    link = MqttLink(
        MqttConfig(port=broker.port), f"bench-agent-{device}",
        will=(TOPICS.status(device), b"offline"), birth=lambda: (TOPICS.status(device), b"online"),
    )  # fmt: skip
    stop = threading.Event()
    uplink = ResultsUplink(outbox, link, TOPICS.results(device), stop)
    link.start()
    link.connected.wait(10)
    uplink.start()
    started = time.time()
    for payload in payloads:  # the inference thread's side: one append per result
        outbox.append(payload)
    figures = finish(consumer, started, count)
    deadline = time.monotonic() + 10  # the last PUBACKs may trail the last delivery
    while outbox.queued and time.monotonic() < deadline:
        stop.wait(0.05)
    figures["left_in_outbox"] = outbox.queued
    figures["messages"] = uplink.batches
    stop.set()
    uplink.join(5)
    link.stop()
    outbox.close()
    return figures


def run_naive(broker: MosquittoBroker, count: int) -> dict[str, float]:
    """One QoS 1 publish per result into paho's in-memory queue, paho's defaults otherwise."""
    device = "bench-naive"
    payloads = results(device, count)
    consumer = start_consumer(broker, device, count)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-naive")
    client.connect(broker.host, broker.port)
    client.loop_start()
    started = time.time()
    for payload in payloads:
        client.publish(TOPICS.results(device), payload, qos=1)
    figures = finish(consumer, started, count)
    figures["messages"] = count
    client.disconnect()
    client.loop_stop()
    return figures


def outbox_write_us(state: Path, payloads: list[bytes]) -> float:
    outbox = Outbox(state / "write.db")
    began = time.perf_counter()
    for payload in payloads:
        outbox.append(payload)
    took = time.perf_counter() - began
    outbox.close()
    return took / len(payloads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=int, default=50_000)
    parser.add_argument("--naive-results", type=int, help="default: as many as --results")
    args = parser.parse_args()
    # On disk beside the project, not /tmp: on many boards /tmp is RAM, the state dir is not.
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-outbox-") as tmp:
        state = Path(tmp)
        write_us = outbox_write_us(state, results("bench-write", 20_000))
        broker = MosquittoBroker().start()  # stock settings: no limits or tuning added
        try:
            ours = run_outbox(broker, args.results, state)
            naive = run_naive(broker, args.naive_results or args.results)
        finally:
            broker.close()
    speedup = ours["results_per_s"] / naive["results_per_s"] if naive["results_per_s"] else None
    rows = [("", "outbox + batched uplink", "naive QoS 1 per result")]
    for key in ("results", "received", "lost", "duplicates_dropped", "in_order", "messages",
                "seconds", "results_per_s"):  # fmt: skip
        rows.append((key, str(ours[key]), str(naive[key])))
    print("Mosquitto with default settings, one agent → one consumer process, QoS 1")
    for row in rows:
        print(f"  {row[0]:<20} {row[1]:>24} {row[2]:>24}")
    print(f"  outbox write per result: {write_us:.1f} µs (goal < 50)")
    print(f"  speed-up over naive: {speedup:.1f}×" if speedup else "  naive delivered nothing")
    print(json.dumps({
        "results_per_s": ours["results_per_s"],
        "lost": ours["lost"],
        "duplicates_after_dedupe": ours["duplicates_after_dedupe"],
        "in_order": ours["in_order"],
        "left_in_outbox": ours["left_in_outbox"],
        "outbox_write_us": round(write_us, 2),
        "naive_results_per_s": naive["results_per_s"],
        "naive_lost": naive["lost"],
        "speedup": round(speedup, 1) if speedup else None,
    }))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--consume":
        consume(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), idle=15.0)
    else:
        main()
