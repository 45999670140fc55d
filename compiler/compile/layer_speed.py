"""Each weighted layer's MAC rate, measured: which layers keep the int8 kernels busy and which
starve them (narrow layers run far below the machine's peak).

The float and int8 models run under ONNX Runtime's profiler (one thread, batch 1); the time of
each Conv/Gemm/MatMul kernel per run is read from the profile and its MACs from the graph's
shapes. ORT renames the nodes it fuses; ``profile_names`` maps them back.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .layer_profile import LayerShape, layer_shapes, layer_times
from .quantize import weighted_layers

log = logging.getLogger(__name__)

MAX_RUNS, MIN_RUNS, WARMUP = 300, 30, 10
BUDGET_S = 1.0  # profiled runs per model stop near this (MIN_RUNS at least)


@dataclass(frozen=True)
class LayerSpeed:
    """One weighted layer: its MACs per inference, and time and rate in each model (µs, GMAC/s);
    None where the profile had no kernel for it."""

    name: str  # the torch module, when the exporter said; else the ONNX node
    op: str
    out_channels: int | None
    macs: int
    fp32_us: float | None
    int8_us: float | None

    @staticmethod
    def _rate(macs: int, us: float | None) -> float | None:
        return round(macs / us / 1e3, 2) if us and macs else None  # MAC/µs / 1e3 = GMAC/s

    @property
    def fp32_gmacs(self) -> float | None:
        return self._rate(self.macs, self.fp32_us)

    @property
    def int8_gmacs(self) -> float | None:
        return self._rate(self.macs, self.int8_us)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "out_channels": self.out_channels,
            "macs": self.macs,
            "fp32_us": self.fp32_us,
            "fp32_gmacs": self.fp32_gmacs,
            "int8_us": self.int8_us,
            "int8_gmacs": self.int8_gmacs,
        }


def _session(path: Path, prefix: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile_model(path: Path, sample: np.ndarray) -> tuple[list[dict[str, Any]], int]:
    """The profiler's events for ``path`` run on ``sample`` (its rows: the batch), and how many
    of the first runs are warm-up. Runs stop near BUDGET_S so a large model stays affordable."""
    with tempfile.TemporaryDirectory(prefix="edgewise-profile-") as tmp:
        session = _session(path, Path(tmp) / "profile")
        feed = {session.get_inputs()[0].name: sample}
        start = time.perf_counter()
        for _ in range(WARMUP):
            session.run(None, feed)
        per_run = (time.perf_counter() - start) / WARMUP
        runs = int(min(MAX_RUNS, max(MIN_RUNS, BUDGET_S / max(per_run, 1e-9))))
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return events, WARMUP


def _batch(path: Path, sample: np.ndarray) -> np.ndarray:
    """Batch 1, or the batch the model's input is fixed to."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    first = next(i for i in graph.input if i.name not in initializers)
    dims = first.type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    return sample[: max(fixed, 1)]


def _times(path: Path, sample: np.ndarray) -> dict[str, float]:
    events, warmup = profile_model(path, sample)
    return layer_times(path, events, warmup)


def layer_speed(float_model: Path, int8_model: Path, sample: np.ndarray) -> list[LayerSpeed]:
    """Every weighted layer of ``float_model`` (the model quantization saw: the int8 model keeps
    its node names) with its MACs and its time and rate in both models."""
    x = _batch(float_model, sample)
    shapes: dict[str, LayerShape] = layer_shapes(float_model, len(x))
    fp32, int8 = _times(float_model, x), _times(int8_model, x)
    return [
        LayerSpeed(
            name=layer.layer,
            op=layer.op,
            out_channels=shapes[layer.node].out_channels if layer.node in shapes else None,
            macs=shapes[layer.node].macs if layer.node in shapes else 0,
            fp32_us=fp32.get(layer.node),
            int8_us=int8.get(layer.node),
        )
        for layer in weighted_layers(float_model)
    ]


def measure_layer_speed(
    float_model: Path, int8_model: Path, sample: np.ndarray
) -> list[LayerSpeed] | None:
    """``layer_speed`` for the report: a measurement that cannot be made leaves the section out
    (logged) rather than failing a compile whose model is fine."""
    try:
        return layer_speed(float_model, int8_model, sample)
    except Exception as exc:  # ORT's errors derive from Exception alone
        log.warning("per-layer MAC rate not measured: %s: %s", type(exc).__name__, exc)
        return None
