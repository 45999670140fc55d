"""A device under test: the real agent on a private Mosquitto, and ways to push at it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers import AgentProcess

from agent.contract import Package, Topics
from agent.delivery.store import ModelStore
from compiler.fleet.push import publish_blobs
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config

DEVICE = "cam-1"
TOPICS = Topics()
DEPLOY = """
[deploy]
fetch_timeout = 4
probe_timeout = 8
probe_memory_mb = 1024
max_model_bytes = 8000000
probation_s = 0
"""


def install(package: Package, state: Path) -> None:
    """Put a package on the device's disk as an earlier deployment would have."""
    store = ModelStore(state)
    files = {}
    for blob, path in package.blobs():
        files[blob.path] = store.partial_path(blob)
        shutil.copyfile(path, files[blob.path])
    store.activate(store.stage(package.manifest, package.envelope, files))


@dataclass
class Device:
    agent: AgentProcess
    feed: DeviceFeed
    config: Path
    state: Path

    def deployment(self, state: str, timeout: float = 30) -> dict:
        event = self.feed.wait_for(
            "events", timeout, lambda e: e.get("type") == "deployment" and e["state"] == state
        )
        assert event is not None, f"no '{state}' deployment event\n{self.agent.output()[-3000:]}"
        return event

    def rejected(self, timeout: float = 30) -> str:
        return self.deployment("rejected", timeout)["reason"]

    def serving(self, count: int = 5, timeout: float = 20) -> set[str]:
        versions = set()
        for _ in range(count):
            result = self.feed.wait_for("results", timeout)
            assert result is not None, "no results: the device stopped serving"
            versions.add(result["model"]["version"])
        assert self.agent.proc.poll() is None, "agent exited"
        return versions


def start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra: str = DEPLOY) -> Device:  # type: ignore[no-untyped-def]
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=extra,
    )  # fmt: skip
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    return Device(AgentProcess(config), feed, config, tmp_path / "state")


def publish(cloud, package: Package, envelope: bytes | None = None) -> None:  # type: ignore[no-untyped-def]
    publish_blobs(cloud, TOPICS, package, timeout=10)
    payload = package.envelope if envelope is None else envelope
    cloud.publish(TOPICS.deploy_device(DEVICE), payload, qos=1, retain=True).wait_for_publish(5)


def send(cloud, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    cloud.publish(TOPICS.deploy_device(DEVICE), payload, qos=1, retain=True).wait_for_publish(5)
