"""Hand-built ONNX models for delivery tests: one failing only on live frames, one big."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def flaky_model(path: Path, threshold: float = 1.0) -> Path:
    """Outputs 10 scores while the input stays below ``threshold`` (the agent's all-black warm-up
    frame does), and 11 once a bright pixel shows up — so the label lookup fails on every real
    digit. Only probation after the switch can catch it."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["base"]),
        helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "threshold"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["count"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["count", "one"], ["end"]),
        helper.make_node("Slice", ["base", "zero", "end", "axis"], ["extra"]),
        helper.make_node("Concat", ["base", "extra"], ["logits"], axis=1),
    ]
    constants = [
        weight,
        numpy_helper.from_array(np.array(threshold, np.float32), "threshold"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
    ]
    graph = helper.make_graph(
        nodes,
        "flaky",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def wide_model(path: Path, hidden: int = 4000) -> Path:
    """A valid digits-shaped classifier with ~``hidden``×3 KB of weights: big enough that its
    transfer takes a while."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((784, hidden)).astype(np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32) * 0.01, "w2")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
