"""The stages of one compile, in a temporary folder: the fp32 model (exported from torch and
checked, or an ONNX model made quantizable), pruned and recovered, int8 within the accuracy
budget; each one measured; then the report and the signed package with its golden inputs."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from agent import __version__
from agent.contract import AnySpec, ClassificationSpec, InputSpec, Package, preprocess_batch
from agent.contract.manifest import PostprocessSpec

from ..errors import AccuracyBudgetError, ModelInputError
from .datasets import DataError, Dataset, check_labels
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
from .measure import (
    Evaluation,
    Latency,
    StageMetrics,
    evaluate,
    onnx_params,
    stage_metrics,
    torch_latency,
)
from .onnx_source import OnnxSource, check_input_fits, prepare_onnx
from .options import CompileOptions
from .package import write_package
from .prune import LayerChange, layer_changes, macs_and_params, prune_channels, prune_to_macs
from .prune_search import Search
from .quantize import (
    Calibration,
    QuantOutcome,
    Target,
    detect_target,
    float_ops,
    prepare,
    quantize_within_budget,
    weighted_layers,
)
from .report import (
    Budget,
    CompileReport,
    EagerLatency,
    Environment,
    LayerRow,
    ModelInfo,
    OpsetUpgrade,
)

log = logging.getLogger(__name__)
_Search = Search | None  # --prune auto's, when it ran


@dataclass(frozen=True)
class _Origin:
    """How the fp32 model was made, as the report tells it."""

    output: str  # the output the package serves
    onnx_source: OnnxSource | None = None
    export: ExportCheck | None = None
    torch_eager: EagerLatency | None = None


@dataclass(frozen=True)
class _Float:
    """A float ONNX model (fp32, or pruned), evaluated and measured."""

    path: Path
    evaluation: Evaluation
    metrics: StageMetrics


@dataclass(frozen=True)
class _Pruned:
    model: _Float
    changes: list[LayerChange]
    export: ExportCheck


@dataclass(frozen=True)
class _Int8:
    prepared: Path  # the float model as quantization saw it (its layer names)
    outcome: QuantOutcome
    evaluation: Evaluation
    metrics: StageMetrics


def _export(model: nn.Module, x: np.ndarray, path: Path) -> ExportCheck:
    export_onnx(model, x[:2], path)
    return verify_export(model, path, x)


def _prune(
    source: nn.Module,
    dataset: Dataset,
    spec: AnySpec,
    options: CompileOptions,
    ratio: float | None = None,
) -> tuple[nn.Module, list[LayerChange]]:
    """Pruned at ``ratio`` (a search's trial), else as the options ask; then recovered."""
    example = torch.from_numpy(preprocess_batch(dataset.test.images[:1], spec))
    if ratio is not None:
        pruned = prune_channels(source, example, ratio, options.round_to)
    elif options.target_macs is not None:
        pruned, ratio = prune_to_macs(source, example, options.target_macs, options.round_to)
        log.info("MACs target %.2f met at channel ratio %.3f", options.target_macs, ratio)
    else:
        assert options.prune_ratio is not None
        pruned = prune_channels(source, example, options.prune_ratio, options.round_to)
    if options.recovery_epochs > 0:
        pruned = train_classifier(
            pruned,
            dataset.train,
            spec,
            epochs=options.recovery_epochs,
            lr=options.recovery_lr,
            progress=options.progress,
        )
    return pruned.eval(), layer_changes(source, pruned)


def _layer_rows(
    quant_model: Path,
    changes: list[LayerChange],
    float_nodes: set[str],
    sensitivity: dict[str, float],
) -> list[LayerRow]:
    by_name = {c.name: c for c in changes}
    rows = []
    for layer in weighted_layers(quant_model):
        change = by_name.get(layer.layer)
        rows.append(
            LayerRow(
                name=layer.layer,
                op=layer.op,
                channels_before=change.channels_before if change else None,
                channels_after=change.channels_after if change else None,
                pruning_ratio=round(change.ratio, 4) if change else None,
                quantized=layer.node not in float_nodes,
                sensitivity=sensitivity.get(layer.node),
            )
        )
    return rows


def _golden(int8_path: Path, x: np.ndarray, count: int, path: Path) -> Path:
    """The device runs the golden inputs as one batch: no more than a fixed batch holds."""
    session = ort_session(int8_path)
    inputs = x[: min(count, fixed_batch(session) or count)]
    outputs = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    np.savez(path, inputs=inputs, outputs=outputs)
    return path


class Compilation:
    """One ``compile_model`` call, stage by stage, in the temporary folder ``work``."""

    def __init__(
        self,
        source: SourceModel,
        dataset: Dataset,
        spec: AnySpec,
        options: CompileOptions,
        work: Path,
    ) -> None:
        self.source, self.dataset, self.spec, self.options = source, dataset, spec, options
        self.work = work
        self.x_test = preprocess_batch(dataset.test.images, spec)
        self.x_cal = preprocess_batch(dataset.train.images[: options.calibration_samples], spec)
        self.y_test = dataset.test.labels
        self.target = options.target or detect_target()
        self.reference_top1 = np.empty(0)  # fp32's top-1 per held-out image, once fp32 ran

    def _metrics(
        self, path: Path, evaluation: Evaluation, params: int | None, macs: int | None
    ) -> StageMetrics:
        """A stage's figures; top-1 agreement is with fp32's."""
        return stage_metrics(
            path, evaluation, self.reference_top1, self.x_test, params=params, macs=macs
        )

    def fp32(self) -> tuple[_Origin, _Float]:
        path = self.work / "fp32.onnx"
        macs, params, origin = _fp32_model(self.source, self.x_test, path, self.options)
        check_input_fits(path, self.x_test)
        evaluation = evaluate(path, self.x_test, self.y_test)
        _check_output_width(evaluation.logits, len(self.dataset.labels), origin.onnx_source)
        self.reference_top1 = evaluation.logits.argmax(1)
        return origin, _Float(path, evaluation, self._metrics(path, evaluation, params, macs))

    def pruned(self, fp32: _Float, ratio: float | None = None, work: Path | None = None) -> _Pruned:
        assert self.source.module is not None
        model, changes = _prune(self.source.module, self.dataset, self.spec, self.options, ratio)
        path = (work or self.work) / "pruned.onnx"
        export = _export(model, self.x_test, path)
        evaluation = evaluate(path, self.x_test, self.y_test)
        macs, params = macs_and_params(model, torch.from_numpy(self.x_test[:1]))
        metrics = self._metrics(path, evaluation, params, macs)
        reference, accuracy = fp32.evaluation.accuracy, evaluation.accuracy
        _check_budget("pruned", reference, accuracy, self.options.max_accuracy_drop)
        return _Pruned(_Float(path, evaluation, metrics), changes, export)

    def int8(self, float_model: _Float, fp32: _Float, work: Path | None = None) -> _Int8:
        work = work or self.work
        prepared = prepare(float_model.path, work / "prepared.onnx")
        outcome = quantize_within_budget(
            prepared,
            work,
            self.x_cal,
            _input_name(fp32.path),
            evaluate=lambda path: _as_pair(evaluate(path, self.x_test, self.y_test)),
            reference_accuracy=fp32.evaluation.accuracy,
            max_drop_points=self.options.max_accuracy_drop,
            target=self.target,
            method=self.options.calibration,
            progress=self.options.progress,
        )
        evaluation = evaluate(outcome.path, self.x_test, self.y_test)
        last = float_model.metrics
        metrics = self._metrics(outcome.path, evaluation, last.params, last.macs)
        return _Int8(prepared, outcome, evaluation, metrics)

    def report(
        self, origin: _Origin, fp32: _Float, pruned: _Pruned | None, int8: _Int8, search: _Search
    ) -> CompileReport:
        stages = {"fp32": fp32.metrics}
        if pruned is not None:
            stages["pruned"] = pruned.model.metrics
        stages["int8"] = int8.metrics
        outcome, options = int8.outcome, self.options
        float_nodes = {layer.node for layer in outcome.float_layers}
        changes = pruned.changes if pruned else []
        drop = round((fp32.evaluation.accuracy - int8.evaluation.accuracy) * 100, 3)
        return CompileReport(
            model=ModelInfo(name=options.name, version=options.version, output=origin.output),
            stages=stages,
            budget=Budget(max_accuracy_drop=options.max_accuracy_drop, accuracy_drop=drop),
            layers=_layer_rows(int8.prepared, changes, float_nodes, outcome.sensitivity),
            float_layers=[layer.layer for layer in outcome.float_layers],
            float_ops=float_ops(outcome.path),
            environment=_environment(self.target, options.calibration, origin.onnx_source),
            opset_upgrade=_opset_upgrade(origin.onnx_source),
            export=origin.export,
            torch_eager=origin.torch_eager,
            export_pruned=pruned.export if pruned else None,
            prune_search=search,
        )

    def _postprocess(self, float_path: Path) -> PostprocessSpec:
        """The options' postprocess (events for keyword spotting), else top-1 classification;
        either way over the dataset's labels."""
        labels, given = self.dataset.labels, self.options.postprocess
        if given is None:
            return ClassificationSpec(labels=labels, softmax=not _ends_in_softmax(float_path))
        check_labels(given, labels)
        return given

    def package(self, float_model: _Float, int8: _Int8, report: CompileReport) -> Package:
        options, model = self.options, int8.outcome.path
        golden = _golden(model, self.x_test, options.golden_count, self.work / "golden.npz")
        return write_package(
            options.out_dir,
            model,
            name=options.name,
            version=options.version,
            input_spec=InputSpec(name=_input_name(model), shape=_input_shape(model)),
            preprocess=self.spec,
            postprocess=self._postprocess(float_model.path),
            metrics=report.as_metrics(),
            signing_key=options.signing_key,
            chunk_size=options.chunk_size,
            golden=golden,
        )


def _fp32_model(
    source: SourceModel, x_test: np.ndarray, fp32_path: Path, options: CompileOptions
) -> tuple[int | None, int, _Origin]:
    """The float ONNX model every later stage starts from, at ``fp32_path``: exported from torch
    and checked against it, or an ONNX model made quantizable. (MACs, params, its origin.)"""
    if source.module is None:
        assert source.onnx_path is not None
        work = fp32_path.parent
        onnx_source = prepare_onnx(source.onnx_path, fp32_path, x_test, options.output, work)
        return None, onnx_params(fp32_path), _Origin(onnx_source.output, onnx_source=onnx_source)
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
    export = _export(source.module, x_test, fp32_path)
    eager = _eager_latency(torch_latency(source.module, x_test))
    return macs, params, _Origin(OUTPUT_NAME, export=export, torch_eager=eager)


def _opset_upgrade(onnx_source: OnnxSource | None) -> OpsetUpgrade | None:
    if onnx_source is None or onnx_source.upgrade_check is None:
        return None
    return OpsetUpgrade(onnx_source.opset, onnx_source.upgraded_to, onnx_source.upgrade_check)


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


def _eager_latency(latency: Latency) -> EagerLatency:
    return EagerLatency(p50_ms_1t=round(latency.p50_ms, 4), p99_ms_1t=round(latency.p99_ms, 4))


def _input_name(path: Path) -> str:
    return ort_session(path).get_inputs()[0].name


def _input_shape(path: Path) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in ort_session(path).get_inputs()[0].shape)


def _environment(
    target: Target, calibration: Calibration, onnx_source: OnnxSource | None
) -> Environment:
    """``opset`` is the input model's own (a torch model's is the export's)."""
    return Environment(
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
        onnx_version=onnx.__version__,
        opset=onnx_source.opset if onnx_source else OPSET,
        opset_upgraded_to=onnx_source.upgraded_to if onnx_source else None,
        target=target,
        calibration=calibration,
        compiler_version=__version__,
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
    )
