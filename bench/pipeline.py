"""Pipeline benchmark: `edgewise-agent bench` (agent frame path against a bare decode →
preprocess → session.run loop, same run), plus the daemon's cold start and RSS serving a video.

    .venv/bin/python bench/pipeline.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from device_harness import install, start_device

from agent.contract import generate_keypair
from compiler.broker import MosquittoBroker
from compiler.datasets import load_dataset
from compiler.demo_model import train_demo_model
from compiler.digits import PREPROCESS
from compiler.loading import SourceModel
from compiler.mqtt import BrokerAddress, connect, disconnect
from compiler.pipeline import CompileOptions, compile_model
from compiler.video import write_digits_video

BIN = Path(sys.executable).parent


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


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

        broker = MosquittoBroker().start()
        cloud = connect(BrokerAddress(broker.host, broker.port))
        install(package, root / "state")
        started = time.monotonic()
        dev = start_device(broker, cloud, (key, pub), video, root)
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
    print()
    print(f"{'daemon (edgewise-agent run, video at 30 fps)':<48}")
    print(f"{'cold start to first result (s)':<40}{cold_start:>10.3f}")
    print(f"{'RSS serving / peak (MB)':<40}{rss:>10.1f} / {peak:.1f}")
    print(f"{'torch mapped in the agent process':<40}{torch_mapped!s:>10}")
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
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
