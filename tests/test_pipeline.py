"""The frame path: slot semantics, rate control, sources that fail or end, and the bench."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from device_harness import DEVICE, TOPICS, install
from helpers import BIN, AgentProcess

from agent.config import ResultsConfig
from agent.inference.pipeline import FrameSlot
from agent.inference.postprocess import Prediction
from agent.inference.runtime import Inference
from agent.sources import Frame
from agent.upstream.results import RateFilter
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config
from compiler.recipe.video import write_digits_video


def frame(i: int) -> Frame:
    import numpy as np

    return Frame(np.zeros((2, 2), np.uint8), i, float(i))


def inference(label: str | None, score: float = 0.9) -> Inference:
    predictions = [Prediction(label, score)] if label else []
    return Inference(predictions, 0.1, 0.1, 0.1)


def test_live_slot_keeps_only_the_latest_frame() -> None:
    slot, stop = FrameSlot(block=False), threading.Event()
    for i in range(5):
        slot.put(frame(i), stop)
    assert slot.take(0.1).index == 4  # type: ignore[union-attr]
    assert slot.dropped == 4
    assert slot.take(0.01) is None


def test_file_slot_makes_capture_wait_instead_of_dropping() -> None:
    slot, stop = FrameSlot(block=True, depth=2), threading.Event()
    slot.put(frame(0), stop)
    slot.put(frame(1), stop)
    third = threading.Thread(target=slot.put, args=(frame(2), stop))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a full file slot must block the producer"
    assert slot.take(1).index == 0  # type: ignore[union-attr]
    third.join(2)
    assert [slot.take(1).index, slot.take(1).index] == [1, 2]  # type: ignore[union-attr]
    assert slot.dropped == 0


@pytest.mark.parametrize(
    ("config", "stream", "sent"),
    [
        (ResultsConfig(mode="every"), [("a", 0), ("a", 0.1)], [True, True]),
        (ResultsConfig(mode="on_change"), [("a", 0), ("a", 0.1), ("b", 0.2), ("a", 0.3)],
         [True, False, True, True]),
        (ResultsConfig(mode="interval", interval_s=1.0),
         [("a", 0), ("a", 0.5), ("a", 1.0), ("a", 1.2)], [True, False, True, False]),
        (ResultsConfig(mode="threshold", min_score=0.8), [("a", 0), ("b", 0.1), (None, 0.2)],
         [True, False, False]),
    ],
)  # fmt: skip
def test_rate_control(config: ResultsConfig, stream: list, sent: list[bool]) -> None:  # type: ignore[type-arg]
    rate = RateFilter(config)
    scores = {"a": 0.9, "b": 0.5}
    got = [rate.admit(inference(label, scores.get(label or "", 0)), now) for label, now in stream]
    assert got == sent
    assert rate.suppressed == sent.count(False)


def source_events(feed: DeviceFeed, count: int, timeout: float = 30) -> list[dict]:
    events = []
    while len(events) < count:
        event = feed.wait_for("events", timeout, lambda e: e.get("type") == "source")
        assert event is not None, f"only {events}"
        events.append(event)
    return events


def test_video_that_ends_is_reported_and_reopened(
    mosquitto, cloud, compiled, signing_keys, digits, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    video = tmp_path / "short.avi"
    write_digits_video(video, digits.test, count=4, frames_per_digit=2)
    install(compiled.package, tmp_path / "state")
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE,
    )  # fmt: skip
    config.write_text(config.read_text().replace("loop = true", "loop = false"))
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        ended, reopened = source_events(feed, 2)
        assert ended["state"] == "ended" and "end of" in ended["detail"]
        assert reopened["state"] == "open"
        frames = [feed.wait_for("results", 10) for _ in range(3)]
        assert all(f is not None for f in frames) and agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.output()


def test_missing_camera_is_reported_and_retried(
    mosquitto, cloud, compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]],
        video=Path("/dev/video97"), state=tmp_path / "state", device=DEVICE,
    )  # fmt: skip
    config.write_text(
        config.read_text().replace('kind = "video"', 'kind = "camera"').replace("loop = true\n", "")
    )
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        first, second = source_events(feed, 2)
        assert first["state"] == second["state"] == "failed"
        assert "/dev/video97" in first["detail"] and "reopening in 1 s" in first["detail"]
        assert "reopening in 2 s" in second["detail"]
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.output()


def test_agent_bench_reports_both_paths(compiled, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    video = tmp_path / "v.avi"
    write_digits_video(video, digits.test, count=20)
    out = subprocess.run(
        [str(BIN / "edgewise-agent"), "bench", "--package", str(compiled.package.root),
         "--source", str(video), "--frames", "200", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["bare"]["frames"] == report["agent"]["frames"] == 200
    assert report["agent"]["fps"] > 0 and report["bare"]["fps"] > 0
    assert {"queue", "preprocess", "inference", "postprocess", "report"} <= set(
        report["agent"]["stages"]
    )
    assert report["torch_imported"] is False
    assert "frames/s" in out.stdout
