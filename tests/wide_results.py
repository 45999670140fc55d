"""A package whose every result is about 6 KB, like a detection model reporting 100 boxes: a
digits-shaped classifier with 160 labels that reports all of them (top_k = 160)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.contract import ClassificationSpec, Package
from compiler.compile.package import write_package

LABELS = tuple(f"class-{i:03d}" for i in range(160))


def _model(path: Path, input_name: str) -> Path:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((784, len(LABELS))).astype(np.float32) * 0.01
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [input_name], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "wide-results",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def wide_results_package(base: Package, out: Path, key: Path) -> Package:
    """Signed with ``key``; input and preprocessing as ``base`` (the digits demo)."""
    out.mkdir(parents=True, exist_ok=True)
    spec = ClassificationSpec(labels=LABELS, top_k=len(LABELS), min_score=0.0)
    model = _model(out / "wide.onnx", base.manifest.input.name)
    return write_package(
        out, model, name="wide-results", version="1.0.0",
        input_spec=base.manifest.input, preprocess=base.manifest.preprocess, postprocess=spec,
        metrics={}, signing_key=key,
    )  # fmt: skip
