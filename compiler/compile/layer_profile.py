"""The two halves of a per-layer MAC rate (``layer_speed``): each weighted node's MACs from the
graph's inferred shapes, and its kernel time per run from ONNX Runtime's JSON profile."""

from __future__ import annotations

import bisect
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .quantize import WEIGHTED_OPS

# Ops ORT fuses into the weighted op before them (activations, a residual add, QDQ pairs): a
# kernel named after one of their outputs is that weighted op's.
_FUSED_AFTER = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Add", "Sum", "Mul"}
    | {"BatchNormalization", "QuantizeLinear", "DequantizeLinear"}
)
_COMPUTE = ("Conv", "Gemm", "MatMul")  # in every weighted kernel's op: QLinearConv, FusedGemm, …
TRIM = 0.1  # the slowest tenth of runs is left out: other work on the machine only adds time


@dataclass(frozen=True)
class LayerShape:
    op: str
    out_channels: int | None
    macs: int  # per inference of the batch the shapes were taken at


def _dims(graph: onnx.GraphProto, batch: int) -> dict[str, list[int]]:
    """Every tensor's shape; a symbolic dimension is the batch (the only one exporters leave)."""
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim
        ]
        for v in (*graph.input, *graph.value_info, *graph.output)
        if v.type.tensor_type.HasField("shape")
    }
    return shapes | {t.name: list(t.dims) for t in graph.initializer}


def _shape(node: onnx.NodeProto, dims: dict[str, list[int]]) -> LayerShape | None:
    """MACs: one multiply-add per output element per input it reads."""
    x, w, y = (dims.get(name) for name in (*node.input[:2], node.output[0]))
    if not x or not w or not y:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return LayerShape(node.op_type, w[0], math.prod(y) * math.prod(w[1:]))
    if node.op_type == "ConvTranspose":
        group = int(attrs.get("group", 1))
        return LayerShape(node.op_type, w[1] * group, math.prod(x) * math.prod(w[1:]))
    k = x[0] if node.op_type == "Gemm" and attrs.get("transA") else x[-1]
    return LayerShape(node.op_type, y[-1], math.prod(y) * k)


def layer_shapes(path: Path, batch: int = 1) -> dict[str, LayerShape]:
    """Each Conv/ConvTranspose/Gemm/MatMul node's output channels and MACs at ``batch``."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    dims = _dims(graph, batch)
    found = {n.name: _shape(n, dims) for n in graph.node if n.op_type in WEIGHTED_OPS}
    return {name: shape for name, shape in found.items() if shape is not None}


def _resolve(
    name: str, names: set[str], producers: dict[str, onnx.NodeProto], weighted: set[str]
) -> str | None:
    """The weighted node an ORT kernel name stands for. Fusions keep the original name with a
    suffix (``node_conv2d_token_1``) or prefix (``fused node_linear``), or name the kernel after
    the tensor it outputs (``relu_nchwc``: a conv with its ReLU), found here by walking back
    through the ops fused into it."""
    name = re.sub(r"_token_\d+$", "", name).removeprefix("fused ").removesuffix("_nchwc")
    if name in names:
        return name if name in weighted else None
    queue = deque([(producers[name], 0)] if name in producers else [])
    while queue:
        node, depth = queue.popleft()
        if node.name in weighted:
            return node.name
        if node.op_type in _FUSED_AFTER and depth < 4:
            queue.extend((producers[i], depth + 1) for i in node.input if i in producers)
    return None


def profile_names(graph: onnx.GraphProto, kernels: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Kernel name → weighted node, for (name, op) kernels in execution order. Names are
    resolved first; compute kernels left over are matched in order with the nodes left over
    (both run in topological order)."""
    weighted_nodes = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]
    weighted, names = set(weighted_nodes), {n.name for n in graph.node}
    producers = {out: n for n in graph.node for out in n.output}
    compute = [k for k, op in kernels if any(c in op for c in _COMPUTE)]
    found = {
        k: node for k in compute if (node := _resolve(k, names, producers, weighted)) is not None
    }
    left_nodes = [n for n in weighted_nodes if n not in set(found.values())]
    left_kernels = [k for k in compute if k not in found]
    return found | dict(zip(left_kernels, left_nodes, strict=False))


def _kernels(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def _trimmed_mean(values: list[float]) -> float:
    kept = sorted(values)[: max(1, math.ceil(len(values) * (1 - TRIM)))]
    return float(np.mean(kept))


def layer_times(path: Path, events: Sequence[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Weighted node → µs per run (its kernels summed within each run, then the trimmed mean
    over runs), from the profile of ``path``; the first ``warmup`` runs are left out."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    runs = runs[warmup:]
    kernels = _kernels(events)
    order = list(
        dict.fromkeys(
            (e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", "")) for e in kernels
        )
    )
    names = profile_names(onnx.load(str(path), load_external_data=False).graph, order)
    totals: dict[str, dict[int, float]] = {}
    for e in kernels:
        node = names.get(e["name"].removesuffix("_kernel_time"))
        run = bisect.bisect_right(runs, e["ts"]) - 1
        if node is not None and run >= 0:
            per_run = totals.setdefault(node, {})
            per_run[run] = per_run.get(run, 0.0) + float(e["dur"])
    return {node: round(_trimmed_mean(list(r.values())), 2) for node, r in totals.items()}
