"""``edgewise compile``: load → prune + recover → export + verify → quantize within the accuracy
budget → measure every stage → sign a package with its report and golden inputs.

Each step is a plain function of its own module, ``stages`` runs them on one model, and this one
strings the stages together.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from agent.contract import AnySpec, Package

from .auto_prune import auto_prune
from .datasets import Dataset
from .kernels import choose_round_to
from .layer_names import with_modules
from .layer_speed import measure_layer_speed
from .loading import SourceModel
from .options import CompileOptions, check_signing_key
from .quantize import weighted_layers
from .report import CompileReport
from .report_previous import previous_for
from .stages import Compilation

__all__ = ["CompileOptions", "CompileResult", "check_signing_key", "compile_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileResult:
    package: Package
    report: CompileReport
    html: Path | None


def compile_model(
    source: SourceModel, dataset: Dataset, spec: AnySpec, options: CompileOptions
) -> CompileResult:
    check_signing_key(options.signing_key)
    previous = previous_for(options.previous, options.out_dir, options.name, options.version)
    pruning = options.prune_ratio is not None or options.target_macs is not None
    pruning = pruning or options.prune_auto
    if pruning and not source.prunable:
        log.warning("%s input: pruning skipped (needs an eager nn.Module)", source.kind)
        pruning = False
    with tempfile.TemporaryDirectory(prefix="edgewise-compile-") as tmp:
        run = Compilation(source, dataset, spec, options, Path(tmp))
        origin, fp32 = run.fp32()
        search = None
        if pruning and options.prune_auto:
            pruned, int8, search = auto_prune(run, fp32)
        else:
            pruned = run.pruned(fp32) if pruning else None
            int8 = run.int8(pruned.model if pruned else fp32, fp32)
        float_model = pruned.model if pruned else fp32
        report = run.report(origin, fp32, pruned, int8, search)
        report = replace(
            report,
            layer_speed=measure_layer_speed(int8.prepared, int8.outcome.path, run.x_test),
            kernels=choose_round_to() if pruning and options.round_to == "auto" else None,
            layers=with_modules(report.layers, _nodes(int8.prepared), int8.prepared),
            labels=list(dataset.labels),
            previous=previous,
        )
        package = run.package(float_model, int8, report)
    html = None
    if options.html:
        from .report_package import write_package_html

        html = write_package_html(package)
    return CompileResult(package, report, html)


def _nodes(model: Path) -> dict[str, str]:
    """{layer name: its ONNX node's name}, as the report's layer rows are named."""
    return {layer.layer: layer.node for layer in weighted_layers(model)}
