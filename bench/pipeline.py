"""Pipeline benchmark: `edgewise-agent bench` (agent frame path against a bare decode →
preprocess → session.run loop, same run), the daemon's cold start and RSS serving a video, and
the command source reading ffmpeg's 640×480 frames at 30 fps (frames produced vs read, and the
CPU its capture thread spends reading).

    .venv/bin/python bench/pipeline.py

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

from device_harness import install, start_device

from agent.config import CommandConfig
from agent.contract import generate_keypair
from agent.inference.pipeline import CaptureWorker, FrameSlot
from agent.sources.command import CommandSource
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.video import write_digits_video

BIN = Path(sys.executable).parent


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


READ_FRAMES = 300  # 10 s at 30 fps
READ_COMMAND = [
    "ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
    "testsrc=size=640x480:rate=30", "-frames:v", str(READ_FRAMES), "-f", "rawvideo",
    "-pix_fmt", "bgr24", "-",
]  # fmt: skip


def command_reader() -> dict[str, float]:
    """The daemon's capture thread on a command source, with a consumer that keeps up: how many
    of the frames ffmpeg produced in real time it read, and the CPU its reading took."""
    source = CommandSource(
        CommandConfig(kind="command", command=READ_COMMAND, width=640, height=480)
    )
    stop, slot = threading.Event(), FrameSlot(block=False)
    marks: dict[str, tuple[float, float]] = {}

    def on_state(state: str, _detail: str) -> None:
        # Runs on the capture thread itself, so thread_time() is that thread's CPU time.
        marks[state] = (time.thread_time(), time.monotonic())
        if state != "open":
            stop.set()  # ffmpeg wrote its frames and exited (or failed): measure no further

    capture = CaptureWorker(source, slot, stop, on_state)  # type: ignore[arg-type]
    taken = 0
    capture.start()
    while not slot.exhausted:
        taken += slot.take(0.5) is not None
    capture.join()
    assert "ended" in marks, f"ffmpeg did not end cleanly: {marks}"
    (cpu0, wall0), (cpu1, wall1) = marks["open"], marks["ended"]
    return {
        "frames_produced": READ_FRAMES,  # ffmpeg -frames:v, and it exited 0 on a whole frame
        "frames_read": source.frames,
        "frames_taken": taken,
        "frames_dropped": slot.dropped,
        "seconds": round(wall1 - wall0, 2),
        "read_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 2),
    }


def print_reader(reader: dict[str, float]) -> None:
    print()
    print("command source: ffmpeg -re testsrc 640x480 30 fps bgr24 -> pipe -> capture thread")
    counts = f"{reader['frames_read']} / {reader['frames_taken']}"
    print(f"{'frames produced / read / taken':<40}{reader['frames_produced']:>10} / {counts}")
    print(f"{'frames dropped (consumer kept up)':<40}{reader['frames_dropped']:>10}")
    print(f"{'read CPU, % of one core':<40}{reader['read_cpu_percent']:>10.2f}"
          f"  over {reader['seconds']} s")  # fmt: skip


def serve_video(package, keys, video: Path, root: Path) -> tuple[float, float, float, bool]:  # type: ignore[no-untyped-def]
    """``edgewise-agent run`` on the video: (cold start s, RSS MB, peak RSS MB, torch mapped)."""
    broker = MosquittoBroker().start()
    cloud = connect(BrokerAddress(broker.host, broker.port))
    install(package, root / "state")
    started = time.monotonic()
    dev = start_device(broker, cloud, keys, video, root)
    feed = dev.feed
    first = feed.wait_for("results", 30)
    cold_start = time.monotonic() - started
    assert first is not None, dev.agent.output()
    for _ in range(90):  # three more seconds of video at 30 fps
        feed.wait_for("results", 5)
    pid = dev.agent.proc.pid
    rss, peak = vm(pid, "VmRSS"), vm(pid, "VmHWM")
    torch_mapped = "/torch/" in Path(f"/proc/{pid}/maps").read_text()
    dev.agent.stop()
    disconnect(cloud)
    broker.close()
    return cold_start, rss, peak, torch_mapped


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key, pub = root / "k", root / "k.pub"
        generate_keypair(key, pub)
        data = load_dataset("digits", seed=0)
        model = train_demo_model(data.train, PREPROCESS, progress=False)
        options = CompileOptions(
            name="digits-cnn", version="1.0.0", signing_key=key, out_dir=root / "pkg",
            progress=False, html=False,
        )  # fmt: skip
        package = compile_model(SourceModel("eager", model), data, PREPROCESS, options).package
        video = root / "digits.avi"
        write_digits_video(video, data.test, count=200, frames_per_digit=3)

        out = subprocess.run(
            [str(BIN / "edgewise-agent"), "bench", "--package", str(package.root), "--source",
             str(video), "--frames", "1500", "--json"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()  # fmt: skip
        print("\n".join(out[:-1]))
        report = json.loads(out[-1])

        cold_start, rss, peak, torch_mapped = serve_video(package, (key, pub), video, root)
    reader = command_reader()
    print()
    print(f"{'daemon (edgewise-agent run, video at 30 fps)':<48}")
    print(f"{'cold start to first result (s)':<40}{cold_start:>10.3f}")
    print(f"{'RSS serving / peak (MB)':<40}{rss:>10.1f} / {peak:.1f}")
    print(f"{'torch mapped in the agent process':<40}{torch_mapped!s:>10}")
    print_reader(reader)
    print(
        json.dumps(
            {
                "agent_vs_bare_throughput": report["agent_vs_bare_throughput"],
                "overhead_ms_per_frame": report["overhead_ms_per_frame"],
                "agent_fps": round(report["agent"]["fps"], 1),
                "bare_fps": round(report["bare"]["fps"], 1),
                "dropped_frames": report["agent"]["dropped"],
                "cold_start_s": round(cold_start, 3),
                "rss_mb": round(rss, 1),
                "rss_peak_mb": round(peak, 1),
                "torch_imported": torch_mapped or report["torch_imported"],
                **{f"command_{k}": v for k, v in reader.items() if k not in ("seconds",)},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
