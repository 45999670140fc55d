"""The agent under a supervisor: sd_notify (READY, WATCHDOG, STOPPING), the watchdog going quiet
when the inference loop stalls, SIGTERM within 5 s without losing results, SIGHUP reloads."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

from device_harness import DEVICE, TOPICS, install
from helpers import AgentProcess

from agent.config import RuntimeConfig
from agent.inference.pipeline import FrameSlot, HealthStats, InferenceWorker, ModelSlot
from agent.inference.runtime import ModelSession
from agent.inference.stats import StageStats
from agent.notify import SystemdNotifier, Watchdog
from agent.sources import Frame
from compiler.fleet.results import Deduper, DeviceFeed
from compiler.recipe.demo import write_agent_config


class NotifySocket:
    """A unix datagram socket bound where systemd's would be; collects what the agent sends."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def until(self, field: str, timeout: float) -> list[str]:
        """Datagrams up to and including the first holding ``field``."""
        got, deadline = [], time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next(remaining)
            if message is None:
                break
            got.append(message)
            if field in message.splitlines():
                return got
        raise AssertionError(f"no {field} in {timeout} s; got {got}")

    def close(self) -> None:
        self.sock.close()


def agent_config(mosquitto, signing_keys, video, tmp_path: Path, extra: str = "") -> Path:  # type: ignore[no-untyped-def]
    return write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=extra,
    )  # fmt: skip


def test_ready_watchdog_stopping_in_order(
    mosquitto, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
    agent = AgentProcess(agent_config(mosquitto, signing_keys, video, tmp_path), env=env)
    try:
        before_ready = notify.until("READY=1", 30)
        assert not any("WATCHDOG=1" in m for m in before_ready[:-1])
        assert "STATUS=serving digits-cnn 1.0.0" in before_ready[-1]
        pings = [notify.until("WATCHDOG=1", 5) for _ in range(3)]  # every ~0.2 s
        assert all(p[-1] == "WATCHDOG=1" for p in pings)
        agent.proc.send_signal(signal.SIGTERM)
        stopping = notify.until("STOPPING=1", 10)
        assert stopping[-1].startswith("STOPPING=1")
        assert agent.proc.wait(10) == 0, agent.output()[-2000:]
    finally:
        agent.stop()
        notify.close()


def test_a_stalled_inference_loop_stops_the_watchdog(compiled, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    notify = NotifySocket(tmp_path / "notify.sock")
    watchdog = Watchdog(SystemdNotifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}))
    package = compiled.package
    models = ModelSlot()
    models.swap(ModelSession(package.model_path, package.manifest, RuntimeConfig()))
    frames, stop, release = FrameSlot(block=True), threading.Event(), threading.Event()
    stalled = threading.Event()

    def sink(frame, _session, _inference) -> None:  # type: ignore[no-untyped-def]
        if frame.index == 5:  # e.g. a publish that never returns
            stalled.set()
            release.wait(30)

    worker = InferenceWorker(frames, models, sink, stop, HealthStats(), StageStats(), watchdog.beat)
    worker.start()
    image = digits.test.images[0]
    try:
        assert notify.until("WATCHDOG=1", 5)  # the idle loop pings too
        for i in range(10):
            frames.put(Frame(image, i, time.time()), stop)
            if i == 5:
                assert stalled.wait(10)
                break
        while notify.next(0.25) is not None:  # pings already sent before the stall
            pass
        assert notify.next(1.0) is None, "the watchdog kept pinging while the loop was stuck"
        release.set()
        assert notify.until("WATCHDOG=1", 5)
    finally:
        release.set()
        stop.set()
        frames.close()
        worker.join(5)
        notify.close()


def test_sigterm_mid_stream_exits_fast_offline_and_loses_nothing(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    statuses: list[dict] = []
    offline = threading.Event()

    def on_status(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        statuses.append(json.loads(msg.payload))
        if statuses[-1]["state"] == "offline":
            offline.set()

    cloud.message_callback_add(TOPICS.status(DEVICE), on_status)
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    cloud.subscribe(TOPICS.status(DEVICE), qos=1)
    agent = AgentProcess(agent_config(mosquitto, signing_keys, video, tmp_path))
    dedupe, seqs = Deduper(), []
    for _ in range(30):
        result = feed.wait_for("results", 30)
        assert result is not None, agent.output()[-2000:]
        if dedupe.first_time(result["id"]):
            seqs.append(result["seq"])
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.proc.wait(10)
    took = time.monotonic() - began
    assert code == 0 and took < 5, (code, took, agent.output()[-2000:])
    assert offline.wait(10), statuses
    produced = agent.results_produced()
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    left = [json.loads(p)["seq"] for (p,) in db.execute("SELECT payload FROM results")]
    db.close()
    while (result := feed.wait_for("results", 2)) is not None:
        if dedupe.first_time(result["id"]):
            seqs.append(result["seq"])
    assert sorted(set(seqs) | set(left)) == list(range(1, produced + 1)), (produced, left)
    agent.stop()


def test_sighup_reloads_what_it_can_and_refuses_a_broken_config(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    quiet = '[results]\nmode = "interval"\ninterval_s = 3600\n'
    config = agent_config(mosquitto, signing_keys, video, tmp_path, extra=quiet)
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        assert feed.wait_for("results", 30) is not None  # one result, then one an hour
        config.write_text(config.read_text().replace(quiet, "[results]\nmode = \"every\"\n")
                          .replace("[mqtt]\n", "[mqtt]\nkeepalive = 20\n"))  # fmt: skip
        agent.proc.send_signal(signal.SIGHUP)
        event = feed.wait_for("events", 10, lambda e: e.get("type") == "config")
        assert event is not None and event["state"] == "reloaded", event
        assert event["applied"] == ["results.interval_s", "results.mode"]
        assert event["needs_restart"] == ["mqtt.keepalive"]
        assert all(feed.wait_for("results", 10) is not None for _ in range(10))
        config.write_text(config.read_text().replace('mode = "every"', "mode = 7"))
        agent.proc.send_signal(signal.SIGHUP)
        event = feed.wait_for("events", 10, lambda e: e.get("type") == "config")
        assert event is not None and event["state"] == "rejected"
        assert "results.mode" in event["reason"]
        assert all(feed.wait_for("results", 10) is not None for _ in range(10)), "still serving"
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.output()[-2000:]
