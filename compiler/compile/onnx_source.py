"""An ONNX model from any tool, made ready to quantize: its data loaded in, the served output
chosen, its one input checked, an opset older than per-channel QDQ allows upgraded and checked
against the original on real data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, version_converter

from ..errors import InputError, ModelInputError
from .datasets import DataError
from .export import OPSET, ExportCheck, ort_outputs, ort_session

log = logging.getLogger(__name__)

MIN_OPSET = 7
# Per-channel int8 weights need DequantizeLinear's ``axis``, which arrived in opset 13.
QUANT_OPSET = 13
# Upgrade to the exporter's opset, so every path quantizes the same ops; 13 if the converter
# lacks an adapter on the way.
UPGRADE_TARGETS = (OPSET, QUANT_OPSET)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


@dataclass(frozen=True)
class OnnxSource:
    opset: int  # the model's own
    upgraded_to: int | None
    output: str  # the one the package serves
    outputs: tuple[str, ...]  # all the model had
    upgrade_check: ExportCheck | None


def load_onnx(path: Path) -> onnx.ModelProto:
    """The model with every external-data tensor read into it (they live beside the file)."""
    try:
        return onnx.load(str(path), load_external_data=True)
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelInputError(
            f"{path}: cannot read the model or its external data ({exc}): keep the data files "
            "beside the model, as it names them"
        ) from exc


def model_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelInputError("the model imports no default-domain (ai.onnx) opset")
    return max(versions)


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs fed at run time: IR < 4 also lists every initializer among the inputs."""
    weights = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def check_one_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The device feeds one image tensor, one frame at a time."""
    inputs = real_inputs(model.graph)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelInputError(
            f"the model takes {len(inputs)} inputs ({names}); the device feeds one image "
            "tensor: export it with a single input"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 1:
        raise ModelInputError(
            f"input {inputs[0].name!r} has a fixed batch of {dims[0].dim_value}; the device runs "
            "one frame at a time: export it with batch 1 or a dynamic batch"
        )
    return inputs[0]


def _layout_hint(shape: list[int | None], x: np.ndarray) -> str:
    """Say so when the model wants the other layout of the same image."""
    if x.ndim != 4 or len(shape) != 4:
        return "check --preprocess"
    nchw_to_nhwc = (x.shape[2], x.shape[3], x.shape[1])
    nhwc_to_nchw = (x.shape[3], x.shape[1], x.shape[2])
    for other, layout in ((nchw_to_nhwc, "NHWC"), (nhwc_to_nchw, "NCHW")):
        if all(d is None or d == s for d, s in zip(shape[1:], other, strict=True)):
            return f'the model takes {layout}: set layout = "{layout}" in --preprocess'
    return "check --preprocess (width, height, color, layout)"


def check_input_fits(model_path: Path, x: np.ndarray) -> None:
    """Calibration/evaluation tensors must match the model's input (any batch) and dtype."""
    try:
        expected = ort_session(model_path).get_inputs()[0]
    except Exception as exc:  # ORT raises its own untyped errors for graphs it rejects
        raise ModelInputError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from exc
    shape = [d if isinstance(d, int) else None for d in expected.shape]
    fits = len(shape) == x.ndim and all(
        d is None or d == s for d, s in zip(shape[1:], x.shape[1:], strict=True)
    )
    if not fits or expected.type != "tensor(float)" or x.dtype != np.float32:
        raise DataError(
            f"preprocessed data {x.dtype} {list(x.shape[1:])} does not fit the model input "
            f"{expected.name!r} {expected.type} {expected.shape[1:]}: {_layout_hint(shape, x)}"
        )


def _needed_names(node: onnx.NodeProto) -> set[str]:
    """Inputs of a node, with the outer names its subgraphs (If, Loop, Scan) read."""
    names = set(node.input)
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names |= _needed_names(inner)
    return names


def select_output(model: onnx.ModelProto, name: str | None) -> str:
    """Keep only output ``name`` (default: the first) and the nodes and weights it needs: the
    device reads the model's first output."""
    graph = model.graph
    names = [o.name for o in graph.output]
    chosen = names[0] if name is None else name
    if chosen not in names:  # the command asks for what is not there: usage, exit 2
        raise InputError(
            f"the model has no output {chosen!r}; choose one of {', '.join(names)} (--output)"
        )
    kept_output = [o for o in graph.output if o.name == chosen]
    del graph.output[:]
    graph.output.extend(kept_output)
    needed, kept_nodes = {chosen}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept_nodes.append(node)
            needed |= _needed_names(node)
    kept_nodes.reverse()
    del graph.node[:]
    graph.node.extend(kept_nodes)
    fed = {i.name for i in real_inputs(graph)}
    weights = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    inputs = [i for i in graph.input if i.name in needed or i.name in fed]
    del graph.input[:]
    graph.input.extend(inputs)
    return chosen


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes unique names: the report's layer table and the float fallback
    (``nodes_to_exclude``) address nodes by name."""
    taken = {node.name for node in graph.node if node.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Weights listed as graph inputs may be overridden at run time, so ORT will not fold or
    quantize them as constants; IR 4 and later need not list them."""
    graph = model.graph
    inputs = real_inputs(graph)
    del graph.input[:]
    graph.input.extend(inputs)


def upgrade(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, int]:
    """The model converted to the first of UPGRADE_TARGETS the converter manages."""
    reasons = []
    for target in UPGRADE_TARGETS:
        try:
            converted = version_converter.convert_version(model, target)
            converted.ir_version = max(
                converted.ir_version, helper.find_min_ir_version_for(list(converted.opset_import))
            )
            _drop_initializer_inputs(converted)
            onnx.checker.check_model(converted)
        except Exception as exc:  # the converter's C++ side raises RuntimeError, or worse
            reasons.append(f"to {target}: {_first_line(exc)}")
            continue
        return converted, target
    raise ModelInputError(
        f"cannot upgrade opset {opset} to {QUANT_OPSET} or later, which per-channel int8 needs "
        f"({'; '.join(reasons)}): re-export the model at opset {QUANT_OPSET} or newer"
    )


def _run(path: Path, x: np.ndarray, opset: int) -> np.ndarray:
    try:
        return ort_outputs(path, x)
    except Exception as exc:  # ORT raises its own untyped errors for graphs it rejects
        message = f"ONNX Runtime cannot run the model at opset {opset}: {_first_line(exc)}"
        raise ModelInputError(message) from exc


def check_upgrade(
    original: Path, upgraded: Path, x: np.ndarray, opsets: tuple[int, int], rtol: float = 1e-4
) -> ExportCheck:
    """Both models on the same held-out inputs in ONNX Runtime; raise if they disagree."""
    expected, got = _run(original, x, opsets[0]), _run(upgraded, x, opsets[1])
    scale = max(float(np.abs(expected).max()), 1.0)
    check = ExportCheck(
        max_abs_diff=float(np.abs(expected - got).max()),
        top1_agreement=float((expected.argmax(-1) == got.argmax(-1)).mean()),
    )
    if check.max_abs_diff > rtol * scale or check.top1_agreement < 1.0:
        raise ModelInputError(
            f"upgrading opset {opsets[0]} to {opsets[1]} changed the model's outputs (max |diff| "
            f"{check.max_abs_diff:.3g}, top-1 agreement {check.top1_agreement:.2%}): re-export "
            f"the model at opset {QUANT_OPSET} or newer"
        )
    return check


def _save(model: onnx.ModelProto, path: Path) -> Path:
    try:
        onnx.save(model, str(path))  # one self-contained file
    except ValueError as exc:  # protobuf's 2 GB limit
        raise ModelInputError(f"the model does not fit one ONNX file ({exc})") from exc
    return path


def prepare_onnx(
    source: Path, out_path: Path, x: np.ndarray, output: str | None, workdir: Path
) -> OnnxSource:
    """``source`` → ``out_path``: self-contained, one input, one output, opset ≥ 13, and computing
    what ``source`` computes on ``x`` (the held-out data)."""
    model = load_onnx(source)
    opset = model_opset(model)
    if opset < MIN_OPSET:
        raise ModelInputError(
            f"opset {opset} is older than {MIN_OPSET}, the oldest the compiler takes: re-export "
            f"the model at opset {QUANT_OPSET} or newer"
        )
    check_one_input(model)
    outputs = tuple(o.name for o in model.graph.output)
    chosen = select_output(model, output)
    name_nodes(model.graph)
    if opset >= QUANT_OPSET:
        _drop_initializer_inputs(model)
        _save(model, out_path)
        return OnnxSource(opset, None, chosen, outputs, None)
    original = _save(model, workdir / "original.onnx")
    check_input_fits(original, x)
    upgraded, target = upgrade(model, opset)
    _save(upgraded, out_path)
    check = check_upgrade(original, out_path, x, (opset, target))
    log.info("opset %d upgraded to %d: max |diff| %.2e", opset, target, check.max_abs_diff)
    return OnnxSource(opset, target, chosen, outputs, check)
