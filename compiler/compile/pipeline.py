"""``edgewise compile``: load → prune + recover → export + verify → quantize within the accuracy
budget → measure every stage → sign a package with its report and golden inputs.

Each step is a plain function of its own module, ``stages`` runs them on one model, and this one
strings the stages together.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.contract import Package, PreprocessSpec

from .datasets import Dataset
from .loading import SourceModel
from .options import CompileOptions, check_signing_key
from .report import CompileReport
from .stages import Compilation

__all__ = ["CompileOptions", "CompileResult", "check_signing_key", "compile_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileResult:
    package: Package
    report: CompileReport
    html: Path | None


def compile_model(
    source: SourceModel, dataset: Dataset, spec: PreprocessSpec, options: CompileOptions
) -> CompileResult:
    check_signing_key(options.signing_key)
    pruning = options.prune_ratio is not None or options.target_macs is not None
    if pruning and not source.prunable:
        log.warning("%s input: pruning skipped (needs an eager nn.Module)", source.kind)
        pruning = False
    with tempfile.TemporaryDirectory(prefix="edgewise-compile-") as tmp:
        run = Compilation(source, dataset, spec, options, Path(tmp))
        origin, fp32 = run.fp32()
        pruned = run.pruned(fp32) if pruning else None
        float_model = pruned.model if pruned else fp32
        int8 = run.int8(float_model, fp32)
        report = run.report(origin, fp32, pruned, int8)
        package = run.package(float_model, int8, report)
    html = None
    if options.html:
        from .report_render import write_html

        html = write_html(report, package.root.with_name(package.root.name + ".html"))
    return CompileResult(package, report, html)
