"""Device control benchmark: signed command round trips, shadow evaluation's cost, snapshots.

- Command round trip on loopback: 100 signed ``ping`` commands to the real agent (private
  Mosquitto), publish → ``done`` reply, p50/p99; beside it, in the same run, the floor any MQTT
  request/response pays on that broker: 100 round trips through a bare paho echo client.
- Serving fps of the real inference thread on the digits model, without a shadow candidate and
  with one (the same model under another version) at 10% and 100% of frames sampled.
- Snapshot: the ``snapshot`` command on a 640×480 video, command sent → JPEG reassembled and
  checked (median of 5).

    .venv/bin/python bench/control.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from control_harness import Operator, command, command_keys, commands_section
from device_harness import DEPLOY, install, start_device
from forge import package_from

from agent.config import RuntimeConfig, ShadowConfig
from agent.contract import Package, generate_keypair
from agent.contract.snapshot import Snapshot, assemble
from agent.control.shadow import ShadowRunner
from agent.inference.pipeline import FrameSlot, HealthStats, InferenceWorker, ModelSlot
from agent.inference.runtime import load_package
from agent.inference.stats import StageStats
from agent.sources.base import Frame
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.video import write_digits_video

ROUND_TRIPS = 100
SHADOW_FRAMES = 3000
SNAPSHOTS = 5


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def echo_rtts(port: int) -> list[float]:
    """Request/response through the broker with nothing behind it: the floor for a command."""
    asker = connect(BrokerAddress("127.0.0.1", port), f"ask-{uuid.uuid4().hex[:6]}")
    echo = connect(BrokerAddress("127.0.0.1", port), f"echo-{uuid.uuid4().hex[:6]}")
    answered = threading.Event()
    echo.on_message = lambda c, _u, m: c.publish("bench/answer", m.payload, qos=1)
    asker.on_message = lambda _c, _u, _m: answered.set()
    Subscriber(echo).subscribe([("bench/ask", 1)])
    Subscriber(asker).subscribe([("bench/answer", 1)])
    rtts = []
    for _ in range(ROUND_TRIPS):
        answered.clear()
        start = time.perf_counter()
        asker.publish("bench/ask", b"x" * 400, qos=1)
        assert answered.wait(5), "the echo never answered"
        rtts.append((time.perf_counter() - start) * 1e3)
    disconnect(asker)
    disconnect(echo)
    return rtts


def command_rtts(operator: Operator) -> list[float]:
    rtts = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        reply = operator.run("ping")
        assert reply["state"] == "done", reply
        rtts.append((time.perf_counter() - start) * 1e3)
    return rtts


def snapshot_seconds(operator: Operator) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(SNAPSHOTS):
        start = time.perf_counter()
        cmd = command("snapshot")
        operator.send(cmd)
        reply = operator.final(cmd.id)
        assert reply["state"] == "done", reply
        snapshot = Snapshot.model_validate(reply["result"]["snapshot"])
        jpeg = assemble(snapshot, operator.chunks[cmd.id])  # chunks come before the reply
        times.append(time.perf_counter() - start)
        assert (snapshot.width, snapshot.height) == (640, 480)
        size = len(jpeg)
    return statistics.median(times), size


def write_vga_video(path: Path, digits_video: Path) -> Path:
    """The digits video scaled to 640×480 with sensor-like noise: a camera-sized frame."""
    reader = cv2.VideoCapture(str(digits_video))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    rng = np.random.default_rng(0)
    while True:
        ok, frame = reader.read()
        if not ok:
            break
        big = cv2.resize(frame, (640, 480), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.add(big, rng.integers(0, 24, big.shape, dtype=np.uint8)))
    writer.release()
    return path


def serving_fps(
    package: Package, frames: list[np.ndarray], candidate: Package | None, sample: float
) -> float:
    """Frames per second of the real inference thread over the frames (a recording: none
    dropped), with ``candidate`` shadowed on ``sample`` of them."""
    runtime = RuntimeConfig()
    models, stop = ModelSlot(), threading.Event()
    models.swap(load_package(package, runtime))
    slot = FrameSlot(block=True)
    worker = InferenceWorker(slot, models, lambda *_: None, stop, HealthStats(), StageStats())
    runner = None
    if candidate is not None:
        config = ShadowConfig(sample=sample, max_cpu_percent=100, interval_s=3600)
        runner = ShadowRunner(
            config=lambda: config, runtime=lambda: runtime, report=lambda _e: None,
            promote=lambda _v: {}, keep_dir=Path(tempfile.mkdtemp()), stop=stop,
        )  # fmt: skip
        runner.start()
        runner.start_candidate(candidate)
        worker.observers.append(runner.offer)
    worker.start()
    start = time.perf_counter()
    for i, image in enumerate(frames):
        slot.put(Frame(image, i, time.time()), stop)
    slot.close()
    worker.join()
    elapsed = time.perf_counter() - start
    stop.set()
    if runner is not None:
        runner.join(5)
    return len(frames) / elapsed


def model_package(root: Path, keys: tuple[Path, Path]) -> tuple[Package, Package, Any]:
    digits = load_dataset("digits", seed=0)
    model = train_demo_model(digits.train, PREPROCESS, epochs=3)
    options = CompileOptions(name="digits-cnn", version="1.0.0", signing_key=keys[0],
                             out_dir=root / "pkg", progress=False, html=False)  # fmt: skip
    package = compile_model(SourceModel("eager", model), digits, PREPROCESS, options).package
    candidate = package_from(package, root / "candidate", keys[0], version="1.0.1")
    return package, candidate, digits


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-control-"))
    keys = (root / "signing.key", root / "signing.pub")
    generate_keypair(*keys)
    package, candidate, digits = model_package(root, keys)
    video = write_digits_video(
        root / "digits.avi", digits.test, count=60, frames_per_digit=3, seed=1
    )
    frames = []
    reader = cv2.VideoCapture(str(video))
    while (read := reader.read())[0]:
        frames.append(read[1])
    frames = (frames * (SHADOW_FRAMES // len(frames) + 1))[:SHADOW_FRAMES]
    fps = {
        "none": serving_fps(package, frames, None, 0),
        "10pct": serving_fps(package, frames, candidate, 0.1),
        "100pct": serving_fps(package, frames, candidate, 1.0),
    }
    broker = MosquittoBroker().start()
    cloud = connect(BrokerAddress(broker.host, broker.port))
    ckeys = command_keys(root / "command-keys")
    install(package, root / "state")
    vga = write_vga_video(root / "vga.avi", video)
    device = start_device(broker, cloud, keys, vga, root, extra=DEPLOY + commands_section(ckeys[1]))
    assert device.feed.wait_for("results", 30) is not None, device.agent.output()
    operator = Operator(broker.port, ckeys[0])
    echo, rtts = echo_rtts(broker.port), command_rtts(operator)
    snap_s, snap_bytes = snapshot_seconds(operator)
    operator.close()
    device.agent.stop()
    disconnect(cloud)
    broker.close()
    figures = {
        "command_rtt_p50_ms": round(percentile(rtts, 50), 2),
        "command_rtt_p99_ms": round(percentile(rtts, 99), 2),
        "mqtt_echo_rtt_p50_ms": round(percentile(echo, 50), 2),
        "mqtt_echo_rtt_p99_ms": round(percentile(echo, 99), 2),
        "command_vs_echo_p50": round(percentile(rtts, 50) / percentile(echo, 50), 2),
        "serving_fps": round(fps["none"], 1),
        "serving_fps_shadow_10pct": round(fps["10pct"], 1),
        "serving_fps_shadow_100pct": round(fps["100pct"], 1),
        "shadow_fps_ratio_10pct": round(fps["10pct"] / fps["none"], 3),
        "shadow_fps_ratio_100pct": round(fps["100pct"] / fps["none"], 3),
        "snapshot_s": round(snap_s, 3),
        "snapshot_bytes": snap_bytes,
    }
    figures["goal_rtt_p99_under_100ms"] = figures["command_rtt_p99_ms"] < 100
    figures["goal_shadow_10pct_at_least_95pct"] = figures["shadow_fps_ratio_10pct"] >= 0.95
    print_table(figures)
    print(json.dumps(figures))
    return 0


def print_table(figures: dict[str, Any]) -> None:
    print(f"{'figure':<36}{'value':>12}")
    for key, value in figures.items():
        print(f"{key:<36}{value!s:>12}")


if __name__ == "__main__":
    sys.exit(main())
