"""Delivery under faults: a broker restart mid-transfer, kill -9 at any moment, a hot swap at
30 fps."""

from __future__ import annotations

import itertools
import random
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from device_harness import DEPLOY, DEVICE, TOPICS, Device, install, publish, start_device
from forge import package_from
from helpers import AgentProcess
from onnx_models import wide_model

from agent.config import RuntimeConfig
from agent.contract import TrustStore
from agent.delivery.store import ModelStore
from agent.inference.runtime import ModelSession
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.results import DeviceFeed


def big_package(compiled, signing_keys, tmp_path: Path, chunk_size: int):  # type: ignore[no-untyped-def]
    model = wide_model(tmp_path / "wide.onnx", hidden=4000)  # 12.5 MB
    inputs = np.load(compiled.package.root / "golden.npz")["inputs"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": inputs})[0]
    return package_from(
        compiled.package, tmp_path / "big", signing_keys[0], version="3.0.0", model=model,
        golden=(inputs, outputs), chunk_size=chunk_size,
    )  # fmt: skip


def test_broker_restart_mid_transfer_resumes_without_refetching(
    compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    broker = MosquittoBroker(persistent=True).start()
    cloud = connect(BrokerAddress(broker.host, broker.port))
    package = big_package(compiled, signing_keys, tmp_path, chunk_size=16 * 1024)
    total = sum(len(b.chunks) for b, _ in package.blobs())
    publish(cloud, package)
    install(compiled.package, tmp_path / "state")
    extra = DEPLOY.replace("fetch_timeout = 4", "fetch_timeout = 20").replace(
        "max_model_bytes = 8000000", "max_model_bytes = 50000000\nchunk_window = 2"
    )
    dev = start_device(broker, cloud, signing_keys, video, tmp_path, extra=extra)
    try:
        event = dev.feed.wait_for(
            "events", 60, lambda e: e.get("state") == "downloading" and e["percent"] >= 20
        )
        assert event is not None and event["percent"] < 100, dev.agent.output()[-2000:]
        disconnect(cloud)
        broker.stop()  # mid-transfer
        broker.start()  # same port; retained chunks come back from its persistence file
        cloud = connect(BrokerAddress(broker.host, broker.port))
        dev.feed = DeviceFeed(cloud, TOPICS, DEVICE)
        installed = dev.deployment("installed", timeout=120)
        assert installed["chunks"] == {"fetched": total, "resumed": 0, "duplicates": 0}
        dev.deployment("active")
        assert dev.serving() == {"3.0.0"}
    finally:
        dev.agent.stop()
        disconnect(cloud)
        broker.close()


def test_agent_restart_mid_transfer_fetches_only_missing_chunks(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    package = big_package(compiled, signing_keys, tmp_path, chunk_size=16 * 1024)
    total = sum(len(b.chunks) for b, _ in package.blobs())
    publish(cloud, package)
    install(compiled.package, tmp_path / "state")
    extra = DEPLOY.replace("fetch_timeout = 4", "fetch_timeout = 20").replace(
        "max_model_bytes = 8000000", "max_model_bytes = 50000000\nchunk_window = 2"
    )
    dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
    event = dev.feed.wait_for(
        "events", 60, lambda e: e.get("state") == "downloading" and e["percent"] >= 30
    )
    assert event is not None and event["percent"] < 100, dev.agent.output()[-2000:]
    dev.agent.kill()
    again = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
    try:
        chunks = again.deployment("installed", timeout=120)["chunks"]
        assert chunks["resumed"] >= 0.25 * total and chunks["duplicates"] == 0
        assert chunks["fetched"] + chunks["resumed"] == total
        again.deployment("active")
        assert again.serving() == {"3.0.0"}
    finally:
        again.agent.stop()


def test_kill_9_at_any_moment_boots_a_verified_model(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    package = big_package(compiled, signing_keys, tmp_path, chunk_size=64 * 1024)
    publish(cloud, package)
    template = tmp_path / "template"
    install(compiled.package, template)
    trust = TrustStore.from_files([signing_keys[1]])
    extra = DEPLOY.replace("max_model_bytes = 8000000", "max_model_bytes = 50000000")
    # Kill points spread over start-up, download, probe, install and switch.
    delays = [0.4 + 0.15 * i for i in range(20)]
    random.Random(7).shuffle(delays)
    seen = set()
    for trial, delay in enumerate(delays):
        state = tmp_path / "state"
        shutil.rmtree(state, ignore_errors=True)
        shutil.copytree(template, state, symlinks=True)
        config = tmp_path / "agent.toml"
        dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
        time.sleep(delay)  # not synchronisation: the point is to kill at an arbitrary instant
        dev.agent.kill()
        installed = ModelStore(state).current(trust)
        assert installed is not None, f"trial {trial} ({delay:.2f} s): nothing bootable"
        assert installed.manifest.version in {"1.0.0", "3.0.0"}
        session = ModelSession(installed.model_path, installed.manifest, RuntimeConfig())
        session.check_golden(installed.golden_path)
        seen.add(installed.manifest.version)
        assert config.exists()
    assert seen == {"1.0.0", "3.0.0"}, "the kills should land both before and after the switch"
    again = AgentProcess(tmp_path / "agent.toml", "--max-results", "5", log=tmp_path / "again.log")
    assert again.proc.wait(60) == 0, again.output()
    assert "serving installed digits-cnn" in again.output()


def test_hot_swap_at_30_fps_drops_no_frame(device: Device, cloud, v2) -> None:  # type: ignore[no-untyped-def]
    from compiler.fleet.push import push_package

    results = [device.feed.wait_for("results", 10)]
    push_package(cloud, TOPICS, v2, f"device:{DEVICE}")
    after_swap = 0
    while after_swap < 60:
        result = device.feed.wait_for("results", 10)
        assert result is not None, device.agent.output()[-2000:]
        results.append(result)
        after_swap += result["model"]["version"] == "1.1.0"
    versions = [r["model"]["version"] for r in results]
    assert versions[0] == "1.0.0" and versions[-1] == "1.1.0"
    assert versions == sorted(versions), "once swapped, never back"
    for before, after in itertools.pairwise(results):
        assert after["seq"] == before["seq"] + 1
        wrapped = after["frame"] == 0 and before["frame"] == 179  # the 180-frame video loops
        assert after["frame"] == before["frame"] + 1 or wrapped, (before, after)
