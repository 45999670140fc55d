"""Devices' installed figures fed back into their package's report (compiler.fleet.feedback):
on a real Mosquitto, with events made by the agent's own event code from a real probe, and end
to end from a running agent that installs a package."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from device_harness import DEVICE, TOPICS, publish

from agent.config import RuntimeConfig
from agent.contract import Package, read_package
from agent.delivery.outcomes import deployment_event, model_of
from agent.delivery.probe import probe_candidate
from agent.inference.pipeline import ModelSlot
from agent.notify import SystemdNotifier
from agent.upstream.status import StatusBoard
from compiler.compile.report_package import html_path, rewrite_page, write_package_html
from compiler.console.packages import summary
from compiler.fleet.feedback import (
    DEVICES_FILE,
    FeedbackJob,
    installed_figures,
    record,
    with_feedback,
)
from compiler.fleet.mqtt import BrokerAddress
from compiler.fleet.serve import ServeOptions, Service


def eventually(check: Callable[[], bool], timeout: float = 30) -> bool:
    """Polls a file the service writes from its MQTT thread."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class _Link:
    """What StatusBoard publishes through, on the test's cloud connection."""

    def __init__(self, client: Any):
        self._client = client

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self._client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def announce(self) -> None:
        """The retained status is not what the feedback job reads."""


def agent_event(
    client: Any, device: str, package: Package, state: str = "installed", **figures: Any
) -> None:
    """A deployment event as a device publishes it: the agent's StatusBoard and
    deployment_event, with the fields its Candidates.build adds to ``installed``."""
    board = StatusBoard(
        device=device,
        boot_id="boot-1",
        topics=TOPICS,
        source_uri="file:///dev/null",
        models=ModelSlot(),
        notifier=SystemdNotifier({}),
    )
    board.link = _Link(client)  # type: ignore[assignment]
    board.event(deployment_event(state, model_of(package.manifest), **figures))


@pytest.fixture
def packages(compiled: Any, tmp_path: Path) -> Path:
    """A packages folder holding a copy of the session's package, with its report page."""
    folder = tmp_path / "packages"
    folder.mkdir()
    shutil.copytree(compiled.package.root, folder / compiled.package.root.name)
    write_package_html(read_package(folder / compiled.package.root.name))
    return folder


@pytest.fixture
def service(mosquitto: Any, packages: Path, tmp_path: Path) -> Iterator[Service]:
    options = with_feedback(ServeOptions(tmp_path / "blobs"), packages, rewrite_page)
    service = Service(BrokerAddress(mosquitto.host, mosquitto.port), options).start()
    yield service
    service.stop()


def _devices(root: Path) -> dict[str, Any]:
    path = root / DEVICES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_probed_install_lands_in_the_report(
    compiled: Any, cloud: Any, service: Service, packages: Path
) -> None:
    package = read_package(packages / compiled.package.root.name)
    report = probe_candidate(
        package.model_path, package.manifest, package.golden_path, RuntimeConfig()
    )  # the board's own figures: measured here, in the probe's child process
    figures: dict[str, Any] = {
        "latency_p50_ms": round(report.latency_p50_ms, 3),
        "latency_p99_ms": round(report.latency_p99_ms, 3),
        "peak_rss_mb": round(report.peak_rss_mb, 1),
        "backend": report.backend,
        "backends": report.backends,
    }
    cloud.publish(TOPICS.events("cam-9"), b"not json", qos=1).wait_for_publish(5)
    agent_event(cloud, "cam-8", package, "rejected", reason="x")  # not installed: ignored
    agent_event(cloud, "cam-7", package, **figures)
    page = html_path(package.root)
    # the page is rewritten after devices.json: once it shows the device, both are written
    assert eventually(lambda: "<td>cam-7</td>" in page.read_text(encoding="utf-8"))
    entry = _devices(package.root)["cam-7"]
    assert entry["backend"] == report.backend
    assert entry["p50_ms"] == figures["latency_p50_ms"] > 0
    assert entry["p99_ms"] == figures["latency_p99_ms"] >= entry["p50_ms"]
    assert entry["at"].endswith("Z")
    assert set(entry["backends"]) == set(report.backends)
    assert "cam-8" not in _devices(package.root) and "cam-9" not in _devices(package.root)
    listed = summary(package.root)["devices"]  # the console's /api/packages
    assert listed["cam-7"]["p50_ms"] == figures["latency_p50_ms"]
    text = page.read_text(encoding="utf-8")
    assert "<h2>On devices</h2>" in text
    assert f"<td>cam-7</td><td>{report.backend}</td>" in text
    assert f"{figures['latency_p50_ms']:.3f} ms" in text
    assert sorted(p.name for p in package.root.iterdir() if p.name.startswith(".")) == []


def test_figures_for_an_unknown_package_are_ignored(compiled: Any, packages: Path) -> None:
    event = {"type": "deployment", "state": "installed", "at": 1764565200.0,
             "model": {"name": "other", "version": "1.0.0"}, "latency_p50_ms": 1.0}  # fmt: skip
    figures = installed_figures("cam-1", event)
    assert figures is not None and figures.at == "2025-12-01T05:00:00Z"
    assert record(packages, figures) is None
    assert installed_figures("cam-1", event | {"state": "active"}) is None
    assert installed_figures("cam-1", event | {"model": None}) is None


def test_a_second_device_and_a_reinstall_keep_one_entry_each(compiled: Any, packages: Path) -> None:
    manifest = compiled.package.manifest
    base = {"type": "deployment", "state": "installed", "model": model_of(manifest)}
    for device, p50 in (("cam-1", 1.0), ("cam-2", 2.0), ("cam-1", 1.5)):
        figures = installed_figures(device, base | {"latency_p50_ms": p50, "backend": "ort"})
        assert figures is not None
        assert record(packages, figures) == packages / compiled.package.root.name
    root = packages / compiled.package.root.name
    assert {d: e["p50_ms"] for d, e in _devices(root).items()} == {"cam-1": 1.5, "cam-2": 2.0}


def test_an_agent_installing_a_package_feeds_its_report(
    device: Any, cloud: Any, mosquitto: Any, v2: Package, tmp_path: Path
) -> None:
    """Every part real: the agent downloads v2, probes it on this board and publishes
    ``installed``; serve's feedback job writes its figures into v2's report."""
    folder = tmp_path / "v2-packages"
    folder.mkdir()
    shutil.copytree(v2.root, folder / v2.root.name)
    write_package_html(read_package(folder / v2.root.name))
    options = with_feedback(ServeOptions(tmp_path / "blobs2"), folder, rewrite_page)
    service = Service(BrokerAddress(mosquitto.host, mosquitto.port), options).start()
    try:
        publish(cloud, v2)
        installed = device.deployment("installed", timeout=60)
        root = folder / v2.root.name
        page = html_path(root)
        assert eventually(lambda: f"<td>{DEVICE}</td>" in page.read_text(encoding="utf-8"))
    finally:
        service.stop()
    entry = _devices(root)[DEVICE]
    assert entry["p50_ms"] == installed["latency_p50_ms"]
    assert entry["p99_ms"] == installed["latency_p99_ms"]
    assert entry["backend"] == installed["backend"]
    assert service.jobs == {}  # stopped and cleared


def test_many_installs_redraw_a_page_once_per_round(compiled: Any, packages: Path) -> None:
    """A rollout's installs each write devices.json at once; the page is drawn once a round."""
    import paho.mqtt.client as mqtt

    drawn: list[Path] = []
    job = FeedbackJob(None, TOPICS, packages, threading.Event(), drawn.append)  # type: ignore[arg-type]
    model = model_of(compiled.package.manifest)
    for index in range(5):
        message = mqtt.MQTTMessage(topic=TOPICS.events(f"cam-{index}").encode())
        event = {"type": "deployment", "state": "installed", "model": model, "backend": "ort"}
        message.payload = json.dumps(event).encode()
        job._on_message(None, None, message)  # type: ignore[arg-type]
    root = packages / compiled.package.root.name
    assert len(_devices(root)) == 5 and job.recorded == 5
    job._rewrite()
    job._rewrite()  # nothing new: nothing drawn
    assert drawn == [root]
