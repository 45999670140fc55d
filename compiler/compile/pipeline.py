"""``edgewise compile``: load → prune + recover → export + verify → quantize within the accuracy
budget → measure every stage → sign a package with its report and golden inputs.

Each step is a plain function of its own module; this one only strings them together.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from agent import __version__
from agent.contract import ClassificationSpec, InputSpec, Package, PreprocessSpec, preprocess_batch
from agent.contract import load_private_key as _load_private_key

from ..errors import AccuracyBudgetError, CompilerError, ModelInputError
from .datasets import DataError, Dataset
from .export import (
    OPSET,
    OUTPUT_NAME,
    ExportCheck,
    export_onnx,
    fixed_batch,
    ort_session,
    verify_export,
)
from .finetune import train_classifier
from .loading import SourceModel
from .measure import Evaluation, StageMetrics, evaluate, onnx_params, stage_metrics, torch_latency
from .onnx_source import OnnxSource, check_input_fits, prepare_onnx
from .package import write_package
from .prune import LayerChange, layer_changes, macs_and_params, prune_channels, prune_to_macs
from .quantize import (
    Calibration,
    Target,
    detect_target,
    float_ops,
    prepare,
    quantize_within_budget,
    weighted_layers,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileOptions:
    name: str
    version: str
    signing_key: Path
    out_dir: Path
    max_accuracy_drop: float = 1.0  # top-1 points below fp32
    calibration_samples: int = 256
    calibration: Calibration = "minmax"
    target: Target | None = None
    chunk_size: int = 128 * 1024
    prune_ratio: float | None = None  # share of channels removed per layer
    target_macs: float | None = None  # or: prune until MACs are this fraction of the original
    recovery_epochs: int = 3
    recovery_lr: float = 5e-4
    golden_count: int = 4
    output: str | None = None  # the ONNX output the package serves; None: the first
    progress: bool = True
    html: bool = True


@dataclass(frozen=True)
class CompileResult:
    package: Package
    report: dict[str, Any]
    html: Path | None


def check_signing_key(path: Path) -> None:
    """Fail before any work when the key cannot sign."""
    try:
        _load_private_key(path)
    except (OSError, ValueError, TypeError, CompilerError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CompilerError(f"signing key {path}: {reason}") from exc
    except Exception as exc:  # cryptography's errors for non-PEM bytes
        raise CompilerError(f"signing key {path}: not an Ed25519 private key (PEM)") from exc


def _export(model: nn.Module, x: np.ndarray, path: Path) -> ExportCheck:
    export_onnx(model, x[:2], path)
    return verify_export(model, path, x)


def _prune(
    source: nn.Module, dataset: Dataset, spec: PreprocessSpec, options: CompileOptions
) -> tuple[nn.Module, list[LayerChange]]:
    example = torch.from_numpy(preprocess_batch(dataset.test.images[:1], spec))
    if options.target_macs is not None:
        pruned, ratio = prune_to_macs(source, example, options.target_macs)
        log.info("MACs target %.2f met at channel ratio %.3f", options.target_macs, ratio)
    else:
        assert options.prune_ratio is not None
        pruned = prune_channels(source, example, options.prune_ratio)
    if options.recovery_epochs > 0:
        pruned = train_classifier(
            pruned, dataset.train, spec, epochs=options.recovery_epochs, lr=options.recovery_lr,
            progress=options.progress,
        )  # fmt: skip
    return pruned.eval(), layer_changes(source, pruned)


def _layer_rows(
    quant_model: Path,
    changes: list[LayerChange],
    float_nodes: set[str],
    sensitivity: dict[str, float],
) -> list[dict[str, Any]]:
    by_name = {c.name: c for c in changes}
    rows = []
    for layer in weighted_layers(quant_model):
        change = by_name.get(layer.layer)
        rows.append(
            {
                "name": layer.layer,
                "op": layer.op,
                "channels_before": change.channels_before if change else None,
                "channels_after": change.channels_after if change else None,
                "pruning_ratio": round(change.ratio, 4) if change else None,
                "quantized": layer.node not in float_nodes,
                "sensitivity": sensitivity.get(layer.node),
            }
        )
    return rows


def _golden(int8_path: Path, x: np.ndarray, count: int, path: Path) -> Path:
    """The device runs the golden inputs as one batch: no more than a fixed batch holds."""
    session = ort_session(int8_path)
    inputs = x[: min(count, fixed_batch(session) or count)]
    outputs = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    np.savez(path, inputs=inputs, outputs=outputs)
    return path


def compile_model(
    source: SourceModel, dataset: Dataset, spec: PreprocessSpec, options: CompileOptions
) -> CompileResult:
    check_signing_key(options.signing_key)
    pruning = options.prune_ratio is not None or options.target_macs is not None
    if pruning and not source.prunable:
        log.warning("%s input: pruning skipped (needs an eager nn.Module)", source.kind)
        pruning = False
    x_test = preprocess_batch(dataset.test.images, spec)
    x_cal = preprocess_batch(dataset.train.images[: options.calibration_samples], spec)
    y_test = dataset.test.labels
    target = options.target or detect_target()
    stages: dict[str, StageMetrics] = {}
    report: dict[str, Any] = {"model": {"name": options.name, "version": options.version}}
    with tempfile.TemporaryDirectory(prefix="edgewise-compile-") as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        macs, params, onnx_source = _fp32_model(source, x_test, fp32_path, options, report)
        check_input_fits(fp32_path, x_test)
        fp32 = evaluate(fp32_path, x_test, y_test)
        _check_output_width(fp32.logits, len(dataset.labels), onnx_source)
        reference_top1 = fp32.logits.argmax(1)
        stages["fp32"] = stage_metrics(
            fp32_path, fp32, reference_top1, x_test, params=params, macs=macs
        )

        float_path, float_eval, changes = fp32_path, fp32, []
        if pruning:
            assert source.module is not None
            pruned, changes = _prune(source.module, dataset, spec, options)
            float_path = work / "pruned.onnx"
            report["export_pruned"] = vars(_export(pruned, x_test, float_path))
            float_eval = evaluate(float_path, x_test, y_test)
            p_macs, p_params = macs_and_params(pruned, torch.from_numpy(x_test[:1]))
            stages["pruned"] = stage_metrics(
                float_path, float_eval, reference_top1, x_test, params=p_params, macs=p_macs
            )
            _check_budget("pruned", fp32.accuracy, float_eval.accuracy, options.max_accuracy_drop)

        prepared = prepare(float_path, work / "prepared.onnx")
        outcome = quantize_within_budget(
            prepared, work, x_cal, _input_name(fp32_path),
            evaluate=lambda path: _as_pair(evaluate(path, x_test, y_test)),
            reference_accuracy=fp32.accuracy, max_drop_points=options.max_accuracy_drop,
            target=target, method=options.calibration, progress=options.progress,
        )  # fmt: skip
        int8_eval = evaluate(outcome.path, x_test, y_test)
        last = stages.get("pruned", stages["fp32"])
        stages["int8"] = stage_metrics(
            outcome.path, int8_eval, reference_top1, x_test, params=last.params, macs=last.macs
        )
        float_nodes = {layer.node for layer in outcome.float_layers}
        report |= {
            "stages": {name: m.to_dict() for name, m in stages.items()},
            "budget": {
                "max_accuracy_drop": options.max_accuracy_drop,
                "accuracy_drop": round((fp32.accuracy - int8_eval.accuracy) * 100, 3),
                "met": True,
            },
            "layers": _layer_rows(prepared, changes, float_nodes, outcome.sensitivity),
            "float_layers": [layer.layer for layer in outcome.float_layers],
            "float_ops": float_ops(outcome.path),
            "environment": _environment(target, options.calibration, onnx_source),
        }
        golden = _golden(outcome.path, x_test, options.golden_count, work / "golden.npz")
        package = write_package(
            options.out_dir,
            outcome.path,
            name=options.name,
            version=options.version,
            input_spec=InputSpec(name=_input_name(outcome.path), shape=_input_shape(outcome.path)),
            preprocess=spec,
            postprocess=ClassificationSpec(
                labels=dataset.labels, softmax=not _ends_in_softmax(float_path)
            ),
            metrics=report,
            signing_key=options.signing_key,
            chunk_size=options.chunk_size,
            golden=golden,
        )
    html = None
    if options.html:
        from .report import write_html

        html = write_html(report, package.root.with_name(package.root.name + ".html"))
    return CompileResult(package, report, html)


def _fp32_model(
    source: SourceModel,
    x_test: np.ndarray,
    fp32_path: Path,
    options: CompileOptions,
    report: dict[str, Any],
) -> tuple[int | None, int, OnnxSource | None]:
    """The float ONNX model every later stage starts from, at ``fp32_path``: exported from torch
    and checked against it, or an ONNX model made quantizable. (MACs, params, ONNX details.)"""
    if source.module is None:
        assert source.onnx_path is not None
        work = fp32_path.parent
        onnx_source = prepare_onnx(source.onnx_path, fp32_path, x_test, options.output, work)
        report["model"]["output"] = onnx_source.output
        if onnx_source.upgrade_check is not None:
            report["opset_upgrade"] = {
                "from": onnx_source.opset,
                "to": onnx_source.upgraded_to,
                **vars(onnx_source.upgrade_check),
            }
        return None, onnx_params(fp32_path), onnx_source
    if options.output not in (None, OUTPUT_NAME):
        raise ModelInputError(
            f"--output {options.output}: a torch model is exported with one output, {OUTPUT_NAME!r}"
        )
    check_input_fits_torch(source.module, x_test)
    example = torch.from_numpy(x_test[:1])
    if source.kind == "eager":
        macs, params = macs_and_params(source.module, example)
    else:
        macs, params = None, sum(p.numel() for p in source.module.parameters())
    report["model"]["output"] = OUTPUT_NAME
    report["export"] = vars(_export(source.module, x_test, fp32_path))
    report["torch_eager"] = _latency_dict(torch_latency(source.module, x_test))
    return macs, params, None


def _check_output_width(logits: np.ndarray, labels: int, onnx_source: OnnxSource | None) -> None:
    """The served output must hold one score per label."""
    if logits.ndim == 2 and logits.shape[1] == labels:
        return
    name = onnx_source.output if onnx_source else OUTPUT_NAME
    others = (
        f" (outputs: {', '.join(onnx_source.outputs)}; choose with --output)" if onnx_source else ""
    )
    raise ModelInputError(
        f"output {name!r} has shape {list(logits.shape[1:])} per input, not one score for each "
        f"of the data's {labels} labels{others}"
    )


def _ends_in_softmax(model_path: Path) -> bool:
    """Whether the served output is already probabilities (the device must not softmax again)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return producer.get(graph.output[0].name) == "Softmax"


def check_input_fits_torch(module: nn.Module, x: np.ndarray) -> None:
    try:
        with torch.no_grad():
            module.eval()(torch.from_numpy(x[:1]))
    except RuntimeError as exc:
        raise DataError(
            f"preprocessed data {x.dtype} {list(x.shape[1:])} does not fit the model: "
            f"{str(exc).splitlines()[0]} (check --preprocess)"
        ) from exc


def _check_budget(stage: str, reference: float, accuracy: float, max_drop: float) -> None:
    drop = (reference - accuracy) * 100
    if drop > max_drop:
        raise AccuracyBudgetError(
            f"{stage} model top-1 {accuracy:.4f} is {drop:.2f} points below fp32 {reference:.4f} "
            f"before quantization; --max-accuracy-drop allows {max_drop} (prune less or recover "
            "longer)"
        )


def _as_pair(result: Evaluation) -> tuple[float, np.ndarray]:
    return result.accuracy, result.logits


def _latency_dict(latency: Any) -> dict[str, float]:
    return {"p50_ms_1t": round(latency.p50_ms, 4), "p99_ms_1t": round(latency.p99_ms, 4)}


def _input_name(path: Path) -> str:
    return ort_session(path).get_inputs()[0].name


def _input_shape(path: Path) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in ort_session(path).get_inputs()[0].shape)


def _environment(
    target: Target, calibration: Calibration, onnx_source: OnnxSource | None
) -> dict[str, Any]:
    """``opset`` is the input model's own (a torch model's is the export's)."""
    upgraded = onnx_source.upgraded_to if onnx_source else None
    return {
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "onnx_version": onnx.__version__,
        "opset": onnx_source.opset if onnx_source else OPSET,
        **({"opset_upgraded_to": upgraded} if upgraded is not None else {}),
        "target": target,
        "calibration": calibration,
        "compiler_version": __version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
