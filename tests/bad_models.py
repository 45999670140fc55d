"""Bad but real model files: what a broken exporter or an attacker could ship."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inputs, outputs, initializers, path: Path) -> Path:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _input(shape: list[object]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)


def _logits() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])


def not_onnx(path: Path) -> Path:
    path.write_bytes(os.urandom(4096))
    return path


def wrong_input_model(path: Path) -> Path:
    """A valid classifier for 3×32×32 colour images: not what a 28×28 grey source produces."""
    weight = numpy_helper.from_array(np.zeros((3 * 32 * 32, 10), np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    return _save(nodes, [_input(["batch", 3, 32, 32])], [_logits()], [weight], path)


def memory_hog_model(path: Path, gigabytes: int = 8) -> Path:
    """A few hundred bytes that ask for ``gigabytes`` of memory on the first run."""
    elements = gigabytes * 1024**3 // 4
    shape = numpy_helper.from_array(np.array([elements], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["huge"]),
        helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=1),
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("ReduceSum", ["flat", "axes"], ["row"], keepdims=1),
        helper.make_node("Add", ["row", "total"], ["one"]),
        helper.make_node("Expand", ["one", "ten"], ["logits"]),
    ]
    constants = [
        shape,
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([1, 10], np.int64), "ten"),
    ]
    return _save(nodes, [_input(["batch", 1, 28, 28])], [_logits()], constants, path)


def hanging_model(path: Path) -> Path:
    """A Loop of 10¹² iterations: valid, loads at once, and never returns from a run."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.ones((1, 10), np.float32), "step")],
    )  # fmt: skip
    nodes = [
        helper.make_node("Loop", ["trips", "cond", "start"], ["total"], body=body),
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("ReduceSum", ["flat", "axes"], ["row"], keepdims=1),
        helper.make_node("Add", ["row", "total"], ["logits"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(10**12, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.zeros((1, 10), np.float32), "start"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    return _save(nodes, [_input(["batch", 1, 28, 28])], [_logits()], constants, path)
