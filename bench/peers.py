"""The peers Edgewise is measured against: OpenVINO's runtime on an ONNX file (fp32, or the very
QDQ int8 file Edgewise produced) and NNCF's post-training int8 of the fp32 model, each timed at
batch 1 on one thread through a bound infer request (the input set once with shared memory,
then ``request.infer()``: the dict form of a call costs ~100 µs more).

Precision is pinned to f32: on a CPU with bf16 (this one) OpenVINO would otherwise run an fp32
model in bf16, a different model from the one measured everywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compiler.compile.measure import Latency, time_calls

CALIBRATION = 300  # NNCF's calibration samples (its own default subset size)
PROPERTIES = {
    "INFERENCE_NUM_THREADS": 1,
    "PERFORMANCE_HINT": "LATENCY",
    "NUM_STREAMS": 1,
    "INFERENCE_PRECISION_HINT": "f32",
}


def _ov() -> Any:
    import openvino as ov  # the optional extra `openvino`

    return ov


def read(path: Path) -> Any:
    """An ONNX file as an OpenVINO model."""
    return _ov().Core().read_model(str(path))


def compile_ov(model: Any, threads: int = 1) -> Any:
    """A model (or a path to one) compiled for the CPU plugin, for latency."""
    if isinstance(model, str | Path):
        model = read(Path(model))
    return (
        _ov().Core().compile_model(model, "CPU", {**PROPERTIES, "INFERENCE_NUM_THREADS": threads})
    )


def ov_latency(model: Any, sample: np.ndarray, runs: int = 300) -> Latency:
    """Batch-1 latency of ``request.infer()`` with the input bound once (shared memory)."""
    compiled = model if hasattr(model, "create_infer_request") else compile_ov(model)
    request = compiled.create_infer_request()
    feed = np.ascontiguousarray(sample[:1])
    request.set_input_tensor(_ov().Tensor(feed, shared_memory=True))
    return time_calls(request.infer, runs)


def ov_predict(model: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Class predictions (argmax of the first output) over ``x`` in batches."""
    compiled = model if hasattr(model, "create_infer_request") else compile_ov(model)
    request = compiled.create_infer_request()
    out = []
    for i in range(0, len(x), batch):
        result = request.infer({0: np.ascontiguousarray(x[i : i + batch])})
        out.append(np.asarray(result[compiled.output(0)]).argmax(1))
    return np.concatenate(out)


def ov_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((ov_predict(model, x) == y).mean())


def nncf_int8(fp32_path: Path, calibration: np.ndarray, subset: int = CALIBRATION) -> Any:
    """NNCF's default post-training int8 (min-max with fast bias correction) of the fp32 ONNX
    file read by OpenVINO, calibrated on ``subset`` samples taken one at a time."""
    import nncf

    samples = [calibration[i : i + 1] for i in range(min(subset, len(calibration)))]
    return nncf.quantize(read(fp32_path), nncf.Dataset(samples), subset_size=len(samples))


def peer_arms(fp32_path: Path, qdq_path: Path, calibration: np.ndarray) -> dict[str, Any]:
    """The three peers, compiled once for timing: OpenVINO fp32, OpenVINO on Edgewise's QDQ
    file, NNCF int8."""
    return {
        "OpenVINO fp32": compile_ov(fp32_path),
        "OpenVINO QDQ int8": compile_ov(qdq_path),
        "NNCF int8": compile_ov(nncf_int8(fp32_path, calibration)),
    }
