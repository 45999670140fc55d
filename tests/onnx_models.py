"""Hand-built ONNX models: for delivery tests, one failing only on live frames and one big; for the
compiler, a corpus of classifiers as other tools write them (old opsets, odd inputs and outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from agent.contract import PreprocessSpec
from compiler.compile.datasets import Split


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


# --- a corpus of "third-party" classifiers, as other tools write them -------------------------

HIDDEN = 32
FEATURES = 8 * 13 * 13  # Conv(1→8, 3×3, stride 2) on 28×28


def train_corpus_weights(train: Split, spec: PreprocessSpec) -> dict[str, np.ndarray]:
    """Conv → BatchNorm → ReLU → Dropout → Linear → ReLU → Linear, trained briefly on digits so
    accuracy means something; every corpus model is built from these same weights."""
    from compiler.compile.finetune import train_classifier

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Dropout(0.1), torch.nn.Flatten(),
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10),
    )  # fmt: skip
    net = train_classifier(net, train, spec, epochs=4, lr=2e-3)
    conv, bn, fc1, fc2 = net[0], net[1], net[5], net[7]
    tensors = {
        "conv_w": conv.weight, "conv_b": conv.bias, "bn_scale": bn.weight, "bn_bias": bn.bias,
        "bn_mean": bn.running_mean, "bn_var": bn.running_var,
        "fc1_w": fc1.weight, "fc1_b": fc1.bias, "fc2_w": fc2.weight, "fc2_b": fc2.bias,
    }  # fmt: skip
    return {name: t.detach().numpy().astype(np.float32) for name, t in tensors.items()}


@dataclass(frozen=True)
class CorpusModel:
    """How one corpus model differs from the plain opset-13 NCHW classifier."""

    opset: int = 13
    batch: int | str = "N"  # an int fixes the batch dimension
    input_name: str = "input"
    layout: str = "NCHW"  # NHWC starts with a Transpose, as TensorFlow converters write it
    flatten: str = "Reshape"  # Reshape with a constant shape, or Flatten
    hidden_op: str = "Relu"  # "Max" (max(x, 0)): the same function, an op ORT cannot quantize
    features_output: bool = False  # also output the hidden features, listed first
    external_data: bool = False


def _old_style(opset: int, op: str) -> dict[str, object]:
    """Attributes that the opset needs and later opsets dropped."""
    if op == "BatchNormalization" and opset < 9:
        return {"spatial": 1}
    if op == "Dropout" and opset < 12:
        return {"ratio": 0.1}
    return {}


def _corpus_nodes(spec: CorpusModel) -> list[onnx.NodeProto]:
    first = "input_nchw" if spec.layout == "NHWC" else spec.input_name
    nodes = [helper.make_node("Transpose", [spec.input_name], [first], perm=[0, 3, 1, 2])]
    nodes = nodes if spec.layout == "NHWC" else []
    bn_inputs = ["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"]
    flatten = (
        helper.make_node("Reshape", ["dropped", "flat_shape"], ["flat"])
        if spec.flatten == "Reshape"
        else helper.make_node("Flatten", ["dropped"], ["flat"], axis=1)
    )
    hidden_inputs = ["fc1", "zero"] if spec.hidden_op == "Max" else ["fc1"]
    return [
        *nodes,
        helper.make_node("Conv", [first, "conv_w", "conv_b"], ["conv"], strides=[2, 2]),
        helper.make_node("BatchNormalization", bn_inputs, ["bn"], epsilon=1e-5,
                         **_old_style(spec.opset, "BatchNormalization")),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("Dropout", ["relu"], ["dropped"], **_old_style(spec.opset, "Dropout")),
        flatten,
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["fc1"], transB=1),
        helper.make_node(spec.hidden_op, hidden_inputs, ["features"]),
        helper.make_node("Gemm", ["features", "fc2_w", "fc2_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]  # fmt: skip


def corpus_model(path: Path, weights: dict[str, np.ndarray], spec: CorpusModel) -> Path:
    """Write one corpus classifier at ``spec.opset`` with the IR version its era used."""
    shape = [spec.batch, 1, 28, 28] if spec.layout == "NCHW" else [spec.batch, 28, 28, 1]
    flat_batch = spec.batch if isinstance(spec.batch, int) else -1
    constants = {
        **weights,
        "flat_shape": np.array([flat_batch, FEATURES], np.int64),
        **({"zero": np.zeros((), np.float32)} if spec.hidden_op == "Max" else {}),
    }
    initializers = [numpy_helper.from_array(value, name) for name, value in constants.items()]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [spec.batch, 10])]
    if spec.features_output:
        features = helper.make_tensor_value_info(
            "features", TensorProto.FLOAT, [spec.batch, HIDDEN]
        )
        outputs.insert(0, features)
    inputs = [helper.make_tensor_value_info(spec.input_name, TensorProto.FLOAT, shape)]
    if spec.opset < 9:  # IR 3 wants every initializer listed among the graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers]
    graph = helper.make_graph(_corpus_nodes(spec), "corpus", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", spec.opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="corpus")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    if spec.external_data:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data",
                  size_threshold=0)  # fmt: skip
    else:
        onnx.save(model, str(path))
    return path
