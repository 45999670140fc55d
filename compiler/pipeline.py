"""``edgewise compile``: export → verify → quantize → evaluate → sign, as plain steps."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import nn

from agent import __version__
from agent.contract import ClassificationSpec, InputSpec, PreprocessSpec, preprocess_batch

from .digits import Split
from .errors import AccuracyBudgetError
from .export import INPUT_NAME, OPSET, export_onnx, ort_outputs, verify_export
from .measure import Latency, ort_latency, time_calls
from .package import Package, write_package
from .quantize import Calibration, Target, detect_target, quantize_int8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileOptions:
    name: str
    version: str
    signing_key: Path
    out_dir: Path
    labels: tuple[str, ...]
    max_accuracy_drop: float = 1.0  # top-1 points
    calibration_samples: int = 256
    calibration: Calibration = "minmax"
    target: Target | None = None
    chunk_size: int = 128 * 1024


@dataclass(frozen=True)
class StageReport:
    accuracy: float
    size_bytes: int
    ort_latency_1t: Latency


@dataclass(frozen=True)
class CompileReport:
    fp32: StageReport
    int8: StageReport
    torch_latency_1t: Latency
    export_max_abs_diff: float
    export_top1_agreement: float
    int8_top1_agreement: float
    environment: dict[str, Any]

    def metrics(self) -> dict[str, Any]:
        """What goes into the manifest's ``metrics``."""
        return {
            "fp32_accuracy": round(self.fp32.accuracy, 5),
            "int8_accuracy": round(self.int8.accuracy, 5),
            "int8_top1_agreement": round(self.int8_top1_agreement, 5),
            "fp32_bytes": self.fp32.size_bytes,
            "int8_bytes": self.int8.size_bytes,
            "fp32_ort_p50_ms_1t": round(self.fp32.ort_latency_1t.p50_ms, 4),
            "int8_ort_p50_ms_1t": round(self.int8.ort_latency_1t.p50_ms, 4),
            "torch_p50_ms_1t": round(self.torch_latency_1t.p50_ms, 4),
            "export_max_abs_diff": self.export_max_abs_diff,
            **self.environment,
        }


@dataclass(frozen=True)
class CompileResult:
    package: Package
    report: CompileReport


def _stage(path: Path, top1: np.ndarray, labels: np.ndarray, x: np.ndarray) -> StageReport:
    accuracy = float((top1 == labels).mean())
    return StageReport(accuracy, path.stat().st_size, ort_latency(path, x, threads=1))


@torch.no_grad()
def _torch_latency(model: nn.Module, sample: np.ndarray) -> Latency:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tensor = torch.from_numpy(sample)
        return time_calls(lambda: model(tensor))
    finally:
        torch.set_num_threads(threads)


def compile_model(
    model: nn.Module, calib: Split, test: Split, spec: PreprocessSpec, options: CompileOptions
) -> CompileResult:
    model = model.eval()
    x_test = preprocess_batch(test.images, spec)
    x_cal = preprocess_batch(calib.images[: options.calibration_samples], spec)
    target = options.target or detect_target()
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, x_test[:2], fp32_path)
        check = verify_export(model, fp32_path, x_test)
        quantize_int8(
            fp32_path, int8_path, x_cal, INPUT_NAME, method=options.calibration, target=target
        )
        fp32_top1 = ort_outputs(fp32_path, x_test).argmax(1)
        int8_top1 = ort_outputs(int8_path, x_test).argmax(1)
        fp32 = _stage(fp32_path, fp32_top1, test.labels, x_test)
        int8 = _stage(int8_path, int8_top1, test.labels, x_test)
        agreement = float((fp32_top1 == int8_top1).mean())
        drop = (fp32.accuracy - int8.accuracy) * 100
        log.info(
            "accuracy fp32 %.4f int8 %.4f (drop %.2f points)", fp32.accuracy, int8.accuracy, drop
        )
        if drop > options.max_accuracy_drop:
            raise AccuracyBudgetError(
                f"int8 top-1 {int8.accuracy:.4f} is {drop:.2f} points below fp32 "
                f"{fp32.accuracy:.4f}; --max-accuracy-drop allows {options.max_accuracy_drop}"
            )
        report = CompileReport(
            fp32=fp32,
            int8=int8,
            torch_latency_1t=_torch_latency(model, x_test[:1]),
            export_max_abs_diff=check.max_abs_diff,
            export_top1_agreement=check.top1_agreement,
            int8_top1_agreement=agreement,
            environment={
                "target": target,
                "opset": OPSET,
                "calibration": options.calibration,
                "torch_version": torch.__version__,
                "onnxruntime_version": onnxruntime.__version__,
                "compiler_version": __version__,
            },
        )
        package = write_package(
            options.out_dir,
            int8_path,
            name=options.name,
            version=options.version,
            input_spec=InputSpec(name=INPUT_NAME, shape=tuple(spec.input_shape(None))),
            preprocess=spec,
            postprocess=ClassificationSpec(labels=options.labels),
            metrics=report.metrics(),
            signing_key=options.signing_key,
            chunk_size=options.chunk_size,
        )
    return CompileResult(package, report)
