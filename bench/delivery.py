"""Delivery benchmark on loopback Mosquitto: push-to-serving time for a 5 MB model, transfer
throughput and agent RSS growth for a 100 MB model, against a naive baseline (the whole file as
one MQTT message into a paho subscriber) in the same run.

    .venv/bin/python bench/delivery.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from device_harness import DEPLOY, DEVICE, TOPICS, install, start_device
from forge import golden_of, package_from
from onnx_models import wide_model

from agent.contract import generate_keypair
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.push import push_package
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.video import write_digits_video

MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssWatch(threading.Thread):
    """Samples a process's RSS every 10 ms until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, rss_mb(self.pid))


def packaged(base, key: Path, root: Path, hidden: int, version: str):  # type: ignore[no-untyped-def]
    model = wide_model(root / f"wide-{hidden}.onnx", hidden=hidden)
    golden = golden_of(base, model)
    return package_from(base, root / version, key, version=version, model=model, golden=golden)


NAIVE = """
import os, resource, sys, threading, time
import paho.mqtt.client as mqtt
port, topic, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
got = threading.Event()
def on_message(c, u, msg):
    open(out, "wb").write(msg.payload); got.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_message = on_message
c.connect("127.0.0.1", port); c.loop_start()
before = rss()
c.subscribe(topic, 1)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
got.wait(120)
elapsed = time.monotonic() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(elapsed, peak - before, flush=True)
"""


def naive_transfer(broker, cloud, model: Path, root: Path) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [sys.executable, "-c", NAIVE, str(broker.port), "bench/naive", str(root / "naive.bin")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    cloud.publish("bench/naive", model.read_bytes(), qos=1).wait_for_publish(120)
    elapsed, growth = (float(v) for v in proc.stdout.readline().split())
    proc.wait(30)
    return elapsed, growth


def main() -> int:
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
        five = packaged(base, key, root, hidden=1600, version="2.0.0")
        hundred = packaged(base, key, root, hidden=32000, version="3.0.0")
        video = root / "digits.avi"
        write_digits_video(video, data.test, count=30)
        broker = MosquittoBroker().start()
        cloud = connect(BrokerAddress(broker.host, broker.port))
        install(base, root / "state")
        extra = DEPLOY.replace("max_model_bytes = 8000000", "max_model_bytes = 500000000")
        extra = extra.replace("probe_timeout = 8", "probe_timeout = 120").replace(
            "fetch_timeout = 4", "fetch_timeout = 30"
        )
        dev = start_device(broker, cloud, [key, pub], video, root, extra=extra)
        try:
            dev.serving()
            t0 = time.monotonic()
            push_package(cloud, TOPICS, five, f"device:{DEVICE}")
            dev.deployment("active")
            push_to_serving = time.monotonic() - t0

            watch = RssWatch(dev.agent.proc.pid)
            rss_before = rss_mb(dev.agent.proc.pid)
            watch.start()
            push_package(cloud, TOPICS, hundred, f"device:{DEVICE}", timeout=120)
            start = dev.deployment("downloading", timeout=60)
            end = dev.deployment("verifying", timeout=300)
            watch.done.set()
            transfer_s = end["at"] - start["at"]
            dev.deployment("active", timeout=300)
            rss_growth = watch.peak - rss_before
        finally:
            dev.agent.stop()
        naive_s, naive_growth = naive_transfer(broker, cloud, hundred.model_path, root)
        disconnect(cloud)
        broker.close()
        size_5 = five.manifest.model.size / MB
        size_100 = hundred.manifest.model.size / MB
    mbps = size_100 / transfer_s
    naive_mbps = size_100 / naive_s
    print(f"{'measure':<44}{'edgewise':>12}{'naive':>12}")
    print(f"{f'push → serving, {size_5:.1f} MB model (s)':<44}{push_to_serving:>12.3f}{'-':>12}")
    print(f"{f'transfer, {size_100:.0f} MB model (MB/s)':<44}{mbps:>12.1f}{naive_mbps:>12.1f}")
    print(
        f"{'receiver RSS growth during transfer (MB)':<44}{rss_growth:>12.1f}{naive_growth:>12.1f}"
    )
    print("(edgewise: chunked pull, 128 KiB chunks, 32 in flight, to disk; naive: one message)")
    print(
        json.dumps(
            {
                "push_to_serving_s_5mb": round(push_to_serving, 3),
                "transfer_mb_per_s_100mb": round(mbps, 1),
                "rss_growth_mb_100mb": round(rss_growth, 1),
                "naive_transfer_mb_per_s_100mb": round(naive_mbps, 1),
                "naive_rss_growth_mb_100mb": round(naive_growth, 1),
                "model_mb_5": round(size_5, 2),
                "model_mb_100": round(size_100, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
