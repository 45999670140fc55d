"""The whole path on a real Mosquitto: compile → push → the real agent CLI on a video → results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import AgentProcess

from agent.contract import Topics, generate_keypair, iter_chunks
from compiler.compile.package import write_package
from compiler.fleet.push import push_package
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config
from compiler.recipe.video import write_digits_video

DEVICE = "cam-1"
TOPICS = Topics()


@pytest.fixture
def video(digits, tmp_path: Path) -> tuple[Path, list[int]]:  # type: ignore[no-untyped-def]
    path = tmp_path / "digits.avi"
    return path, write_digits_video(path, digits.test, count=60, frames_per_digit=3, seed=1)


@pytest.fixture
def agent_config(mosquitto, signing_keys, video, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]],
        video=video[0], state=tmp_path / "state", device=DEVICE,
        extra="[deploy]\nfetch_timeout = 5\n",
    )  # fmt: skip


def collect_results(feed: DeviceFeed, count: int, timeout: float = 60) -> list[dict]:
    results = []
    for kind, message in feed.messages(timeout):
        if kind == "results":
            results.append(message)
            if len(results) >= count:
                break
    return results


def deploy_and_wait(cloud, feed: DeviceFeed, package) -> dict:  # type: ignore[no-untyped-def]
    push_package(cloud, TOPICS, package, f"device:{DEVICE}")
    event = feed.wait_for("events", 60, lambda e: e.get("state") in ("active", "rejected"))
    assert event is not None, "no deploy event within 60 s"
    return event


def test_push_run_and_read_results(cloud, compiled, agent_config, video) -> None:  # type: ignore[no-untyped-def]
    agent = AgentProcess(agent_config)
    try:
        feed = DeviceFeed(cloud, TOPICS, DEVICE)
        event = deploy_and_wait(cloud, feed, compiled.package)
        assert event["state"] == "active", agent.output()
        assert event["model"] == {"name": "digits-cnn", "version": "1.0.0"}
        results = collect_results(feed, count=150)
    finally:
        assert agent.stop() == 0, agent.output()
    truth = video[1]
    assert len(results) == 150, agent.output()
    correct = sum(r["label"] == str(truth[r["frame"]]) for r in results)
    assert correct / len(results) >= 0.9
    seqs = [r["seq"] for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    first = results[0]
    assert first["device"] == DEVICE and first["model"] == {
        "name": "digits-cnn",
        "version": "1.0.0",
    }
    assert first["latency_ms"]["inference"] > 0 and first["captured_at"] <= first["published_at"]


def test_restarted_agent_serves_installed_model_without_a_push(
    cloud, compiled, agent_config
) -> None:  # type: ignore[no-untyped-def]
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(agent_config)
    try:
        assert deploy_and_wait(cloud, feed, compiled.package)["state"] == "active"
    finally:
        agent.stop()
    cloud.publish(TOPICS.deploy_device(DEVICE), b"", qos=1, retain=True).wait_for_publish(5)
    again = AgentProcess(agent_config, "--max-results", "10")
    assert again.proc.wait(60) == 0, again.output()
    assert "serving installed digits-cnn 1.0.0" in again.output()


def test_untrusted_package_is_rejected_and_old_model_keeps_serving(
    cloud, compiled, agent_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    m = compiled.package.manifest
    rogue = write_package(
        tmp_path / "rogue", compiled.package.model_path, name=m.name, version="2.0.0",
        input_spec=m.input, preprocess=m.preprocess, postprocess=m.postprocess, metrics={},
        signing_key=tmp_path / "rogue.key",
    )  # fmt: skip
    agent = AgentProcess(agent_config)
    try:
        feed = DeviceFeed(cloud, TOPICS, DEVICE)
        assert deploy_and_wait(cloud, feed, compiled.package)["state"] == "active"
        rejected = deploy_and_wait(cloud, feed, rogue)
        assert rejected["state"] == "rejected"
        assert "untrusted key" in rejected["reason"]
        after = collect_results(feed, count=20)
        assert agent.proc.poll() is None, "agent exited after a bad package"
    finally:
        assert agent.stop() == 0, agent.output()
    assert len(after) == 20 and {r["model"]["version"] for r in after} == {"1.0.0"}


def test_corrupted_chunk_is_rejected_and_nothing_installed(
    cloud, compiled, agent_config, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    package = compiled.package
    model = package.manifest.model
    for index, chunk in enumerate(iter_chunks(package.model_path, model.chunk_size)):
        if index == 1:
            chunk = chunk[:100] + bytes([chunk[100] ^ 1]) + chunk[101:]
        cloud.publish(
            TOPICS.blob_chunk(model.sha256, index), chunk, qos=1, retain=True
        ).wait_for_publish(5)
    agent = AgentProcess(agent_config)
    try:
        feed = DeviceFeed(cloud, TOPICS, DEVICE)
        cloud.publish(TOPICS.deploy_device(DEVICE), package.envelope, qos=1, retain=True)
        event = feed.wait_for("events", 60, lambda e: e.get("state") == "rejected")
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.output()
    assert event is not None and event["state"] == "rejected"
    assert "chunk 1 failed its sha256 check twice" in event["reason"]
    assert not (tmp_path / "state" / "current").exists()


def test_agent_runs_without_torch(cloud, compiled, agent_config) -> None:  # type: ignore[no-untyped-def]
    runner = Path(__file__).with_name("without_torch.py")
    agent = AgentProcess(agent_config, prelude=[sys.executable, str(runner), "agent"])
    try:
        feed = DeviceFeed(cloud, TOPICS, DEVICE)
        assert deploy_and_wait(cloud, feed, compiled.package)["state"] == "active", agent.output()
        assert len(collect_results(feed, count=10)) == 10
    finally:
        code = agent.stop()
    assert "BLOCKED-MODULES-LOADED=[]" in agent.output()
    assert code == 0, agent.output()
