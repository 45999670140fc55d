"""The real agent on a command source: ffmpeg plays a digits video into its pipe and the demo
model labels it correctly; SIGTERM leaves no ffmpeg behind; a capture program that does not
exist is a `source` event, retried, without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from device_harness import DEVICE, TOPICS, install
from helpers import AgentProcess

from compiler.fleet.results import DeviceFeed
from compiler.recipe.video import FRAME_SIZE, write_digits_video

FFMPEG = "ffmpeg -hide_banner -nostats -loglevel error"


def command_config(tmp_path: Path, port: int, public_key: Path, source: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[device]\nid = "{DEVICE}"\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[trust]\npublic_keys = ["{public_key.resolve()}"]\n\n'
        f"[source]\n{source}\n"
    )
    return path


@pytest.mark.parametrize("fmt", ["gray", "bgr24"])
def test_agent_labels_digits_read_from_an_ffmpeg_pipe(
    mosquitto, cloud, compiled, signing_keys, digits, tmp_path: Path, fmt: str
) -> None:  # type: ignore[no-untyped-def]
    video = tmp_path / "digits.avi"
    truth = write_digits_video(video, digits.test, count=40, frames_per_digit=3, seed=2)
    install(compiled.package, tmp_path / "state")
    pidfile = tmp_path / "ffmpeg.pid"
    # The shell only records the pid and becomes ffmpeg: the agent's child is ffmpeg itself.
    script = f"echo $$ > {pidfile}; exec {FFMPEG} -re -i {video} -f rawvideo -pix_fmt {fmt} -"
    source = (
        f'kind = "command"\ncommand = ["sh", "-c", "{script}"]\n'
        f'width = {FRAME_SIZE}\nheight = {FRAME_SIZE}\npixel_format = "{fmt}"\n'
    )
    config = command_config(tmp_path, mosquitto.port, signing_keys[1], source)
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        results = [feed.wait_for("results", 30) for _ in range(60)]
        assert all(r is not None for r in results), agent.output()[-3000:]
        pid = int(pidfile.read_text())
        assert Path(f"/proc/{pid}").exists() and agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
    correct = sum(r["label"] == str(truth[r["frame"] % len(truth)]) for r in results)  # type: ignore[index]
    assert correct / len(results) >= 0.9, [(r["frame"], r["label"]) for r in results]  # type: ignore[index]
    assert all(r["source"] == "command:sh" for r in results)  # type: ignore[index]
    # The agent terminated and reaped ffmpeg before it exited: no orphan, no zombie.
    assert not Path(f"/proc/{pid}").exists()
    assert "Traceback" not in agent.output()


def test_a_missing_capture_program_is_a_source_event_and_retried(
    mosquitto, cloud, compiled, signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    source = (
        'kind = "command"\ncommand = "rpicam-vid-not-here -t 0 -o -"\nwidth = 64\nheight = 48\n'
    )
    config = command_config(tmp_path, mosquitto.port, signing_keys[1], source)
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        events = []
        for _ in range(2):
            event = feed.wait_for("events", 30, lambda e: e.get("type") == "source")
            assert event is not None, agent.output()[-3000:]
            events.append(event)
        assert [e["state"] for e in events] == ["failed", "failed"]
        assert "'rpicam-vid-not-here' not found" in events[0]["detail"]
        assert "reopening in 1 s" in events[0]["detail"]
        assert "reopening in 2 s" in events[1]["detail"]
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
    assert "Traceback" not in agent.output()
