"""Static int8 quantization with ONNX Runtime (QDQ, per-channel weights), calibrated on real data,
with per-layer sensitivity and float fallback when the accuracy budget is missed."""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from ..errors import AccuracyBudgetError

# Re-exported: importers of quantize keep finding them here.
from .targets import CALIBRATIONS as CALIBRATIONS
from .targets import TARGETS as TARGETS
from .targets import Calibration, Target
from .targets import detect_target as detect_target

log = logging.getLogger(__name__)

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops ORT's static quantizer has an int8 form for; any other op on float data stays float.
QUANTIZABLE_OPS = frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)
# Bookkeeping ops that read a float tensor without computing on its values.
_NOT_COMPUTE = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "Shape", "Size", "Cast", "Identity"}
)
CALIBRATION_BATCH = 16


def target_settings(target: Target) -> dict[str, object]:
    """Settings known to be accurate per ISA (onnxruntime's quantization guidance).

    x86 with VNNI: u8 activations × s8 weights. x86 AVX2 without VNNI: the u8s8 kernels sum pairs
    in 16 bits and can saturate, so weights use a 7-bit range (reduce_range). arm64: s8s8, which
    its dot-product kernels run natively.
    """
    activation = QuantType.QInt8 if target == "arm64" else QuantType.QUInt8
    return {
        "activation_type": activation,
        "weight_type": QuantType.QInt8,
        "reduce_range": target == "x86-avx2",
    }


class _ArrayReader(CalibrationDataReader):
    def __init__(self, input_name: str, x: np.ndarray, progress: bool, batch: int):
        # Equal batches only: the histogram calibrators stack them into one array.
        if len(x) >= batch:
            x = x[: len(x) - len(x) % batch]
        self._batches = iter(range(0, len(x), batch))
        self._x, self._name, self._size = x, input_name, batch
        self._bar = tqdm(
            total=len(x), desc="calibrate", unit="img", disable=not progress, leave=False
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._batches, None)
        if start is None:
            self._bar.close()
            return None
        batch = self._x[start : start + self._size]
        self._bar.update(len(batch))
        return {self._name: batch}


@dataclass(frozen=True)
class QuantLayer:
    """A weighted ONNX node, named after the torch module it came from when the exporter said."""

    node: str
    op: str
    layer: str


def calibration_batch(model_path: Path) -> int:
    """CALIBRATION_BATCH, or the batch size the model's input is fixed to."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    first = next(i for i in graph.input if i.name not in weights)
    dims = first.type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    return fixed if fixed > 0 else CALIBRATION_BATCH


def prepare(fp32_path: Path, out_path: Path) -> Path:
    """onnxruntime's pre-processing: shape inference and graph optimisation before quantizing."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def _torch_name(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return ".".join(scopes[1:-1]) or None
    return None


def weighted_layers(model_path: Path) -> list[QuantLayer]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [
        QuantLayer(n.name, n.op_type, _torch_name(n) or n.name)
        for n in graph.node
        if n.op_type in WEIGHTED_OPS
    ]


def quantize(
    prepared: Path,
    out_path: Path,
    calibration: np.ndarray,
    input_name: str,
    *,
    target: Target,
    method: Calibration = "minmax",
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    progress: bool = False,
) -> Path:
    """QDQ int8 with per-channel weights; ``exclude`` node names stay float, ``only`` restricts
    quantization to the named nodes (sensitivity analysis)."""
    quantize_static(
        str(prepared),
        str(out_path),
        _ArrayReader(input_name, calibration, progress, calibration_batch(prepared)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        calibrate_method=_METHODS[method],
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only) if only is not None else None,
        **target_settings(target),
    )
    return out_path


@dataclass(frozen=True)
class FloatOp:
    node: str
    op: str


def float_ops(model_path: Path) -> list[FloatOp]:
    """Nodes that compute on float data with an op ORT cannot quantize: they stay float in the
    int8 model (its QDQ pairs dequantize around them)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)}
    types |= {t.name: t.data_type for t in graph.initializer}
    return [
        FloatOp(node=node.name or node.output[0], op=node.op_type)
        for node in graph.node
        if node.op_type not in QUANTIZABLE_OPS | _NOT_COMPUTE
        and any(types.get(name) == onnx.TensorProto.FLOAT for name in node.input)
    ]


Evaluate = Callable[[Path], tuple[float, np.ndarray]]  # model → (accuracy, logits)


@dataclass
class QuantOutcome:
    path: Path
    accuracy: float
    float_layers: list[QuantLayer] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)  # node → relative logit MSE


def _relative_mse(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean((got - reference) ** 2) / max(np.mean(reference**2), 1e-12))


@dataclass(frozen=True)
class _Attempt:
    """Quantizes ``prepared`` with the same data and settings each time, then evaluates it."""

    prepared: Path
    workdir: Path
    calibration: np.ndarray
    input_name: str
    target: Target
    method: Calibration
    evaluate: Evaluate

    def __call__(
        self,
        name: str,
        *,
        exclude: Sequence[str] = (),
        only: Sequence[str] | None = None,
        progress: bool = False,
    ) -> tuple[Path, float, np.ndarray]:
        path = quantize(
            self.prepared,
            self.workdir / f"{name}.onnx",
            self.calibration,
            self.input_name,
            target=self.target,
            method=self.method,
            exclude=exclude,
            only=only,
            progress=progress,
        )
        accuracy, logits = self.evaluate(path)
        return path, accuracy, logits


def quantize_within_budget(
    prepared: Path,
    workdir: Path,
    calibration: np.ndarray,
    input_name: str,
    *,
    evaluate: Evaluate,
    reference_accuracy: float,
    max_drop_points: float,
    target: Target,
    method: Calibration = "minmax",
    progress: bool = False,
) -> QuantOutcome:
    """Quantize everything; if top-1 falls more than ``max_drop_points`` below
    ``reference_accuracy`` (fp32), rank layers by how much quantizing each one alone disturbs the
    logits, and keep the most sensitive ones in float, one more per retry, until the budget is
    met. Raises AccuracyBudgetError otherwise."""
    floor = reference_accuracy - max_drop_points / 100

    attempt = _Attempt(prepared, workdir, calibration, input_name, target, method, evaluate)
    path, accuracy, _ = attempt("int8", progress=progress)
    if accuracy >= floor:
        return QuantOutcome(path, accuracy)
    layers = weighted_layers(prepared)
    _, reference_logits = evaluate(prepared)
    log.info(
        "int8 top-1 %.4f misses the budget (floor %.4f); measuring per-layer sensitivity",
        accuracy,
        floor,
    )
    sensitivity = {}
    for i, layer in enumerate(tqdm(layers, desc="sensitivity", disable=not progress, leave=False)):
        _, _, logits = attempt(f"only-{i}", only=[layer.node])
        sensitivity[layer.node] = _relative_mse(logits, reference_logits)
    ranked = sorted(layers, key=lambda layer: sensitivity[layer.node], reverse=True)
    for k in range(1, len(ranked)):
        kept = ranked[:k]
        path, accuracy, _ = attempt(f"fallback-{k}", exclude=[layer.node for layer in kept])
        log.info("%d layer(s) in float: top-1 %.4f", k, accuracy)
        if accuracy >= floor:
            return QuantOutcome(path, accuracy, kept, sensitivity)
    raise AccuracyBudgetError(
        f"int8 top-1 {accuracy:.4f} stays more than {max_drop_points} points below fp32 "
        f"{reference_accuracy:.4f} even with {len(ranked) - 1} of {len(ranked)} layers in float "
        "(--max-accuracy-drop)"
    )
