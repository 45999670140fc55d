"""Recurrent models: the state a model returns is fed back on the next run, constants are fed
every run, a waveform's context is carried, a reset starts again, and the golden check and the
probe's checks run a stateful model the way serving does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent.config import RuntimeConfig
from agent.contract import Manifest, Package, describe_blob
from agent.delivery.probe_checks import Unfit, check_input, check_serving_path
from agent.errors import ModelLoadError
from agent.inference.golden import GoldenError, check_golden, golden_outputs
from agent.inference.onnxrt import ort
from agent.inference.runtime import ModelSession, load_package
from onnx import TensorProto, helper

WINDOW, CONTEXT = 4, 2


def accumulator(path: Path) -> Path:
    """y = sum(input) + sum(state) + sr; stateN = state + sum(input): a running total."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["input"], ["total"], keepdims=1),
            helper.make_node("Add", ["state", "total"], ["stateN"]),
            helper.make_node("Cast", ["sr"], ["srf"], to=f),
            helper.make_node("Add", ["stateN", "srf"], ["output"]),
        ],
        "accumulator",
        [
            helper.make_tensor_value_info("input", f, [1, CONTEXT + WINDOW]),
            helper.make_tensor_value_info("state", f, [1, 1]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", f, [1, 1]),
            helper.make_tensor_value_info("stateN", f, [1, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def manifest(model: Path, golden: Path | None = None, **overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "acc",
        "version": "1.0.0",
        "created_at": "2026-11-30T00:00:00+00:00",
        "model": describe_blob(model),
        "input": {"name": "input", "shape": [1, CONTEXT + WINDOW]},
        "preprocess": {"kind": "waveform", "window": WINDOW, "context": CONTEXT},
        "postprocess": {"kind": "score", "threshold": 100.0},
        "state": [{"input": "state", "output": "stateN", "shape": [1, 1]}],
        "constants": [{"name": "sr", "value": 1000}],
        "golden": describe_blob(golden) if golden else None,
    }
    return Manifest.model_validate({**fields, **overrides})


def ones(k: float = 1.0) -> np.ndarray:
    return np.full(WINDOW, k, np.float32)


def test_the_state_carries_from_run_to_run_and_the_context_comes_first(tmp_path: Path) -> None:
    model = accumulator(tmp_path / "model.onnx")
    session = ModelSession(model, manifest(model), RuntimeConfig())
    # run 1 sees 2 zeros of context + 4 ones; run 2 sees the last 2 ones + 4 twos
    assert session.infer(ones(1)).predictions[0].score == pytest.approx(4 + 1000)
    assert session.infer(ones(2)).predictions[0].score == pytest.approx(4 + (2 + 8) + 1000)
    session.reset()
    assert session.infer(ones(1)).predictions[0].score == pytest.approx(4 + 1000)


def test_warm_up_leaves_no_state_behind(tmp_path: Path) -> None:
    model = accumulator(tmp_path / "model.onnx")
    config = RuntimeConfig(warmup_runs=3)
    assert ModelSession(model, manifest(model), config).infer(ones(1)).top.score == 1004  # type: ignore[union-attr]


def test_a_model_whose_inputs_differ_from_the_manifest_is_refused(tmp_path: Path) -> None:
    model = accumulator(tmp_path / "model.onnx")
    with pytest.raises(ModelLoadError, match="do not match"):
        ModelSession(model, manifest(model, constants=[]), RuntimeConfig())
    wrong = [{"input": "state", "output": "missing", "shape": [1, 1]}]
    with pytest.raises(ModelLoadError, match="state outputs"):
        ModelSession(model, manifest(model, state=wrong), RuntimeConfig())
    with pytest.raises(Unfit, match="do not match"):
        check_input(ort.InferenceSession(str(model)), manifest(model, constants=[]))


def test_golden_inputs_of_a_stateful_model_run_in_order_from_the_start(tmp_path: Path) -> None:
    model = accumulator(tmp_path / "model.onnx")
    session = ort.InferenceSession(str(model))
    inputs = np.ones((3, 1, CONTEXT + WINDOW), np.float32)
    outputs = golden_outputs(session, manifest(model), inputs)
    assert outputs.reshape(-1).tolist() == [1006, 1012, 1018]  # the total grows: state carried
    np.savez(tmp_path / "golden.npz", inputs=inputs, outputs=outputs)
    package = Package(tmp_path, b"{}", manifest(model, tmp_path / "golden.npz"))
    load_package(package, RuntimeConfig())  # the golden check passes as serving runs it
    np.savez(tmp_path / "golden.npz", inputs=inputs, outputs=outputs[::-1].copy())
    with pytest.raises(GoldenError, match="differ"):
        check_golden(session, manifest(model, tmp_path / "golden.npz"), tmp_path / "golden.npz")


def test_the_probe_runs_a_stateful_model_with_its_state_and_constants(tmp_path: Path) -> None:
    model = accumulator(tmp_path / "model.onnx")
    session = ort.InferenceSession(str(model))
    assert check_input(session, manifest(model)) == "input"
    feeds = check_serving_path(session, manifest(model))
    assert set(feeds) == {"input", "state", "sr"}
    assert session.run(None, feeds)[0].item() == 1000.0
