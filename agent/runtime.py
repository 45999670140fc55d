"""An ONNX Runtime session bound to its manifest: frame or sensor window in, predictions out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .config import RuntimeConfig
from .contract import Manifest, PreprocessSpec, SensorSpec, to_tensor
from .errors import ModelLoadError
from .postprocess import Prediction, postprocess


@dataclass(frozen=True)
class Inference:
    predictions: list[Prediction]
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def top(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None


_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization]
    return options


def blank_sample(spec: PreprocessSpec | SensorSpec) -> np.ndarray:
    """An all-zero frame or window of the kind the spec takes (for warm-up)."""
    if isinstance(spec, SensorSpec):
        return np.zeros((spec.window, spec.channels), np.float32)
    return np.zeros((spec.height, spec.width, 3), np.uint8)


class ModelSession:
    """Loads the model, checks its input against the manifest, and warms it up."""

    def __init__(self, model_path: Path, manifest: Manifest, config: RuntimeConfig):
        self.manifest = manifest
        available = set(ort.get_available_providers())
        providers = [p for p in config.providers if p in available] or ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(
                str(model_path), session_options(config), providers=providers
            )
        except Exception as exc:  # ORT raises its own untyped errors for corrupt models
            raise ModelLoadError(f"{manifest.name} {manifest.version}: cannot load: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != manifest.input.name:
            names = [i.name for i in inputs]
            raise ModelLoadError(
                f"model inputs {names} do not match manifest {manifest.input.name!r}"
            )
        self._input = manifest.input.name
        self._dtype = np.dtype(manifest.input.dtype)
        self.providers = self._session.get_providers()
        for _ in range(max(1, config.warmup_runs)):
            self.infer(blank_sample(manifest.preprocess))

    def check_golden(self, golden: Path | None) -> None:
        """Run the package's golden inputs; raise ModelLoadError unless the outputs match."""
        if golden is None:
            return
        with np.load(golden, allow_pickle=False) as data:
            inputs, expected = data["inputs"], data["outputs"]
        (got, *_) = self._session.run(None, {self._input: inputs.astype(self._dtype, copy=False)})
        if got.shape != expected.shape or not np.allclose(
            got, expected, atol=self.manifest.golden_atol, rtol=0
        ):
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else None
            raise ModelLoadError(
                f"golden outputs differ from the package's: max |diff| {diff} > atol "
                f"{self.manifest.golden_atol}"
            )

    def infer(self, sample: np.ndarray) -> Inference:
        """A frame (H×W[×3] uint8) or a sensor window (window×channels) to predictions."""
        t0 = time.perf_counter()
        tensor = to_tensor(sample, self.manifest.preprocess).astype(self._dtype, copy=False)
        t1 = time.perf_counter()
        outputs = self._session.run(None, {self._input: tensor})
        t2 = time.perf_counter()
        predictions = postprocess(
            outputs, self.manifest.postprocess, sample.shape, self.manifest.preprocess
        )
        t3 = time.perf_counter()
        return Inference(predictions, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
