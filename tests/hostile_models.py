"""Small real ONNX models, built in code (no torch), packaged and signed like the compiler does.

- a 10-score classifier on 28×28 grey input: the in-process fuzz rig serves it and the signed
  hostile manifests lie about it (2 labels, uint8 input, a golden file that is not arrays);
- a constant detector answering 100 boxes of 100 classes: results of about 6 KB each, the size
  that jammed the uplink under a 1 MiB packet cap after an outage;
- a sensor model scoring a window by its mean, for the ``mqtt:`` sensor source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from agent.contract import (
    ClassificationSpec,
    DetectionSpec,
    InputSpec,
    Package,
    PreprocessSpec,
    ScoreSpec,
    SensorSpec,
)
from compiler.compile.package import write_package

GRAY28 = PreprocessSpec(width=28, height=28, color="GRAY", mean=(0.1307,), std=(0.3081,))
DIGITS = tuple(str(i) for i in range(10))
DETECTOR_SIDE = 32
BOXES = 100
SENSOR_WINDOW, SENSOR_CHANNELS = 4, 2


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def classifier_model(path: Path, seed: int = 0) -> Path:
    """[N,1,28,28] float32 → Flatten → Gemm → [N,10] logits."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, (28 * 28, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.zeros(10, np.float32), "b")],
    )  # fmt: skip
    return _save(graph, path)


def golden_for(model: Path, inputs: np.ndarray, out: Path) -> Path:
    """The golden file the compiler would write: inputs and what this model answers for them."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    np.savez(out, inputs=inputs, outputs=session.run(None, {name: inputs})[0])
    return out


def classifier_package(root: Path, key: Path, version: str = "1.0.0") -> Package:
    """``tiny-digits`` VERSION: a real signed package with golden inputs, in several chunks."""
    model = classifier_model(root / "src" / "tiny.onnx")
    inputs = np.random.default_rng(1).normal(0, 1, (4, 1, 28, 28)).astype(np.float32)
    golden = golden_for(model, inputs, root / "src" / "golden.npz")
    return write_package(
        root, model, name="tiny-digits", version=version,
        input_spec=InputSpec(name="input", shape=(None, 1, 28, 28)), preprocess=GRAY28,
        postprocess=ClassificationSpec(labels=DIGITS), metrics={}, signing_key=key,
        chunk_size=8 * 1024, golden=golden,
    )  # fmt: skip


def detector_output() -> np.ndarray:
    """YOLOv8 [1, 4+C, N]: box j of class j on a 10×10 grid, none overlapping, all kept by NMS."""
    out = np.zeros((1, 4 + BOXES, BOXES), np.float32)
    for j in range(BOXES):
        row, col = divmod(j, 10)
        out[0, :4, j] = (1.6 + 3.1 * col, 1.6 + 3.1 * row, 2.0, 2.0)  # cx, cy, w, h
        out[0, 4 + j, j] = 0.9
    return out


def detector_model(path: Path) -> Path:
    """Reads its input (so it cannot be folded away) and always answers :func:`detector_output`."""
    side = DETECTOR_SIDE
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["boxes", "nothing"], ["output0"]),
        ],
        "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + BOXES, BOXES])],
        [numpy_helper.from_array(detector_output(), "boxes"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )  # fmt: skip
    return _save(graph, path)


def detector_package(root: Path, key: Path) -> Package:
    """``boxes`` 1.0.0: 100 detections per frame, about 6 KB per result."""
    model = detector_model(root / "src" / "boxes.onnx")
    inputs = np.zeros((1, 3, DETECTOR_SIDE, DETECTOR_SIDE), np.float32)
    golden = golden_for(model, inputs, root / "src" / "golden.npz")
    labels = tuple(f"object-class-{j:03d}" for j in range(BOXES))
    return write_package(
        root, model, name="boxes", version="1.0.0",
        input_spec=InputSpec(name="images", shape=(1, 3, DETECTOR_SIDE, DETECTOR_SIDE)),
        preprocess=PreprocessSpec(width=DETECTOR_SIDE, height=DETECTOR_SIDE),
        postprocess=DetectionSpec(kind="detection", labels=labels, max_detections=BOXES),
        metrics={}, signing_key=key, golden=golden,
    )  # fmt: skip


def sensor_model(path: Path) -> Path:
    """[N, window, channels] → the mean of the window → [N, 1]."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "one"], ["score"]),
        ],
        "mean",
        [helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, ["batch", SENSOR_WINDOW, SENSOR_CHANNELS])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "one")],
    )  # fmt: skip
    return _save(graph, path)


def sensor_package(root: Path, key: Path) -> Package:
    return write_package(
        root, sensor_model(root / "src" / "mean.onnx"), name="vibration", version="1.0.0",
        input_spec=InputSpec(name="input", shape=(None, SENSOR_WINDOW, SENSOR_CHANNELS)),
        preprocess=SensorSpec(kind="sensor", window=SENSOR_WINDOW, channels=SENSOR_CHANNELS),
        postprocess=ScoreSpec(kind="score", threshold=5.0), metrics={}, signing_key=key,
    )  # fmt: skip
