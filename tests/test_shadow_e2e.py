"""Shadow evaluation end to end: the real agent serving digits-cnn 1.0.0 on real Mosquitto is
pushed a signed ``mode: shadow`` package and reports how far it agrees, serving on unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from control_harness import Operator, command_keys, commands_section
from device_harness import DEPLOY, Device, install, publish, start_device
from forge import golden_of, package_from, resign
from onnx import helper, numpy_helper

from agent.config import RuntimeConfig
from agent.contract import Package
from agent.inference.runtime import load_package

SHADOW = "\n[shadow]\nsample = 1.0\ninterval_s = 1\n"
SWAP = (3, 8)  # one label in five, on digits spread evenly


@pytest.fixture
def agent_with(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> Iterator[Callable[[str], Device]]:  # type: ignore[no-untyped-def]
    """Starts an agent serving digits-cnn 1.0.0 with this extra config; stopped at the end."""
    started: list[Device] = []

    def start(extra: str) -> Device:
        install(compiled.package, tmp_path / "state")
        dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=DEPLOY + extra)
        started.append(dev)
        assert dev.serving() == {"1.0.0"}
        return dev

    yield start
    for dev in started:
        assert dev.agent.stop() == 0, dev.agent.output()[-3000:]


@pytest.fixture
def shadowing(agent_with: Callable[[str], Device]) -> Device:
    """An agent serving digits-cnn 1.0.0 that shadows every frame and reports every second."""
    return agent_with(SHADOW)


def swapped(model: Path, out: Path, a: int, b: int) -> Path:
    """``model`` with output classes ``a`` and ``b`` exchanged (a Gather after its output)."""
    proto = onnx.load(str(model))
    graph = proto.graph
    name = graph.output[0].name
    order = list(range(10))
    order[a], order[b] = b, a
    for node in graph.node:
        node.output[:] = [f"{name}_unswapped" if o == name else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(order, np.int64), "swap_order"))
    graph.node.append(
        helper.make_node("Gather", [f"{name}_unswapped", "swap_order"], [name], axis=1)
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def shadow_package(
    base: Package, out: Path, key: Path, version: str, model: Path | None
) -> Package:
    golden = True if model is None else golden_of(base, model)
    made = package_from(base, out, key, version=version, model=model, golden=golden)
    return resign(made, key, mode="shadow")


def report(dev: Device, version: str, frames: int, timeout: float = 60) -> dict[str, Any]:
    """The first agreement report on ``version`` over at least ``frames`` frames."""
    event = dev.feed.wait_for(
        "events",
        timeout,
        lambda e: (
            e.get("type") == "shadow"
            and e.get("state") == "report"
            and e["candidate"]["version"] == version
            and e["frames"] >= frames
        ),
    )
    assert event is not None, f"no shadow report\n{dev.agent.output()[-3000:]}"
    return event


def shadow_event(dev: Device, state: str, timeout: float = 60) -> dict[str, Any]:
    where = lambda e: e.get("type") == "shadow" and e.get("state") == state  # noqa: E731
    event = dev.feed.wait_for("events", timeout, where)
    assert event is not None, f"no shadow {state} event\n{dev.agent.output()[-3000:]}"
    return event


def serves(dev: Device, version: str, timeout: float = 30) -> None:
    """Results come from ``version`` (after those published before the switch)."""
    first = dev.feed.wait_for("results", timeout, lambda r: r["model"]["version"] == version)
    assert first is not None, f"no result from {version}\n{dev.agent.output()[-3000:]}"
    assert dev.serving(count=10) == {version}


def top_labels(package: Package, video: Path) -> list[tuple[str | None, float | None]]:
    """(top label, score) of the package's model on each frame of one pass over the video."""
    session = load_package(package, RuntimeConfig())
    capture = cv2.VideoCapture(str(video))
    tops = []
    while (read := capture.read())[0]:
        top = session.infer(read[1]).top
        tops.append((None, None) if top is None else (top.label, top.score))
    capture.release()
    assert tops
    return tops


def agreement_on(video: Path, serving: Package, candidate: Package) -> float:
    """The share of the video's frames where both models give the same top label."""
    pairs = zip(top_labels(serving, video), top_labels(candidate, video), strict=True)
    return float(np.mean([ours[0] == theirs[0] for ours, theirs in pairs]))


def test_the_same_model_as_a_candidate_agrees_fully(
    shadowing, cloud, compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    candidate = shadow_package(compiled.package, tmp_path / "p", signing_keys[0], "1.1.0", None)
    publish(cloud, candidate)
    shadowing.deployment("staged")
    got = report(shadowing, "1.1.0", frames=100)
    assert got["serving"] == {"name": "digits-cnn", "version": "1.0.0"}
    assert got["task"] == "classification"
    assert (got["agreement"], got["agreements"]) == (1.0, got["frames"])
    assert 0.9 < got["agreement_lower"] < 1.0
    assert got["latency_ms"]["candidate"]["p99"] > 0
    # The candidate never publishes: every result is still the serving model's.
    assert shadowing.serving(count=30) == {"1.0.0"}


def test_a_candidate_flipping_one_label_in_five(
    shadowing, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    flipped = swapped(compiled.package.model_path, tmp_path / "swapped.onnx", *SWAP)
    candidate = shadow_package(compiled.package, tmp_path / "p", signing_keys[0], "1.2.0", flipped)
    publish(cloud, candidate)
    shadowing.deployment("staged")
    # The video loops: the agreement over a loop or more is that of one pass.
    expected = agreement_on(video, compiled.package, candidate)
    assert 0.6 < expected < 0.95  # the video's digits are spread evenly enough to mean it
    got = report(shadowing, "1.2.0", frames=250)
    assert got["agreement"] == pytest.approx(expected, abs=0.06)
    assert got["agreement_lower"] < got["agreement"]
    assert shadowing.serving(count=30) == {"1.0.0"}


def test_the_swapped_model_swaps_exactly_two_labels(
    compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The premise of the test above, checked without an agent: same frames, labels 3 ↔ 8."""
    flipped = swapped(compiled.package.model_path, tmp_path / "swapped.onnx", *SWAP)
    candidate = shadow_package(compiled.package, tmp_path / "p", signing_keys[0], "1.2.0", flipped)
    assert candidate.manifest.mode == "shadow"
    load_package(candidate, RuntimeConfig())  # passes its own golden check
    exchange = {str(SWAP[0]): str(SWAP[1]), str(SWAP[1]): str(SWAP[0])}
    pairs = list(
        zip(top_labels(compiled.package, video), top_labels(candidate, video), strict=True)
    )
    for (ours, score), (theirs, their_score) in pairs:
        assert their_score == pytest.approx(score, abs=1e-6)
        # Quantized logits can tie: argmax then takes the lower class in both models.
        tie = ours in exchange and theirs == ours
        assert theirs == exchange.get(ours, ours) or tie
    assert sum(ours in exchange for (ours, _), _ in pairs) > 10


def test_promoted_by_itself_once_agreement_is_certain_enough(
    agent_with, cloud, compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    dev = agent_with(SHADOW + "promote_at = 0.9\npromote_after = 60\n")
    candidate = shadow_package(compiled.package, tmp_path / "p", signing_keys[0], "1.1.0", None)
    publish(cloud, candidate)
    promoted = shadow_event(dev, "promoted")
    assert promoted["by"] == "agreement" and promoted["frames"] >= 60
    assert promoted["agreement_lower"] >= 0.9
    assert promoted["active"]["model"] == {"name": "digits-cnn", "version": "1.1.0"}
    serves(dev, "1.1.0")


def test_shadow_commands_status_stop_start_promote(
    agent_with, mosquitto, cloud, compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    keys = command_keys(tmp_path / "command-keys")
    dev = agent_with(SHADOW + commands_section(keys[1]))
    publish(cloud, shadow_package(compiled.package, tmp_path / "p", signing_keys[0], "1.1.0", None))
    shadow_event(dev, "started")
    operator = Operator(mosquitto.port, keys[0])
    try:
        status = operator.run("shadow", {"action": "status"})
        assert status["state"] == "done", status
        assert status["result"]["shadow"]["candidate"]["version"] == "1.1.0"
        stopped = operator.run("shadow", {"action": "stop"})
        assert stopped["state"] == "done" and stopped["result"]["state"] == "stopped", stopped
        again = operator.run("shadow", {"action": "stop"})
        assert again["state"] == "failed" and "no shadow candidate" in again["reason"], again
        started = operator.run("shadow", {"action": "start", "version": "1.1.0"})
        assert started["state"] == "done", started
        assert started["result"]["candidate"]["version"] == "1.1.0"
        promoted = operator.run("shadow", {"action": "promote"})
        assert promoted["state"] == "done" and promoted["result"]["by"] == "command", promoted
        serves(dev, "1.1.0")
        assert operator.run("shadow", {"action": "status"})["result"] == {"shadow": None}
    finally:
        operator.close()
