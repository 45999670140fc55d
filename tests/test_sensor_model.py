"""A sensor model end to end: CSV samples → windows → an anomaly score → labelled results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from device_harness import DEVICE, TOPICS
from helpers import AgentProcess
from onnx import TensorProto, helper

from agent.contract import InputSpec, ScoreSpec, SensorSpec
from compiler.compile.package import write_package
from compiler.fleet.push import push_package
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config

WINDOW, CHANNELS = 8, 2


def mean_model(path: Path) -> Path:
    """Scores a window by the mean of its samples."""
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "mean",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WINDOW, CHANNELS])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
         onnx.numpy_helper.from_array(np.array([1], np.int64), "one")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_sensor_windows_are_scored_and_labelled(mosquitto, cloud, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = write_package(
        tmp_path / "pkgs", mean_model(tmp_path / "mean.onnx"), name="vibration", version="1.0.0",
        input_spec=InputSpec(name="input", shape=(None, WINDOW, CHANNELS)),
        preprocess=SensorSpec(kind="sensor", window=WINDOW, channels=CHANNELS),
        postprocess=ScoreSpec(kind="score", threshold=5.0), metrics={},
        signing_key=signing_keys[0],
    )  # fmt: skip
    samples = tmp_path / "samples.csv"
    lines = [f"{1 + i % 2},{1}" for i in range(16)] + ["oops,not,a,number"]
    lines += [f"{10 + i % 3},{10}" for i in range(16)]
    samples.write_text("\n".join(lines) + "\n")
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]],
        video=samples, state=tmp_path / "state", device=DEVICE,
    )  # fmt: skip
    config.write_text(
        config.read_text()
        .replace('kind = "video"', 'kind = "sensor"')
        .replace("loop = true", f"window = {WINDOW}\nhop = {WINDOW}")
    )
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        push_package(cloud, TOPICS, package, f"device:{DEVICE}")
        # The file replays after each end; collect one pass of 4 windows.
        results = []
        while len(results) < 4:
            result = feed.wait_for("results", 30)
            assert result is not None, agent.output()[-2000:]
            if result["frame"] == len(results):
                results.append(result)
            else:
                results.clear()
    finally:
        assert agent.stop() == 0, agent.output()
    labels = [r["label"] for r in results]
    assert labels == ["normal", "normal", "anomaly", "anomaly"]
    assert results[0]["score"] < 5 <= results[3]["score"]
    assert results[0]["model"] == {"name": "vibration", "version": "1.0.0"}
