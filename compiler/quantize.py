"""Static int8 quantization with ONNX Runtime (QDQ, per-channel weights), calibrated on data."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

Target = Literal["x86-vnni", "x86-avx2", "arm64"]
Calibration = Literal["minmax", "entropy", "percentile"]
_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def detect_target() -> Target:
    """The ISA of this machine, which decides how int8 kernels may saturate."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "x86-vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "x86-avx2"


class _ArrayReader(CalibrationDataReader):
    def __init__(self, input_name: str, x: np.ndarray, batch: int = 1):
        self._batches = iter([{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    input_name: str,
    *,
    method: Calibration = "minmax",
    target: Target | None = None,
) -> Path:
    """u8 activations and s8 per-channel weights; on x86 without VNNI the u8s8 kernels can
    overflow their 16-bit accumulators, so weights use a reduced 7-bit range there."""
    target = target or detect_target()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=target == "x86-avx2",
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_METHODS[method],
        )
    return out_path
