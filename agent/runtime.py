"""An ONNX Runtime session bound to its manifest: frame in, labelled predictions out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .config import RuntimeConfig
from .contract import ClassificationSpec, Manifest, preprocess
from .errors import ModelLoadError


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass(frozen=True)
class Inference:
    predictions: list[Prediction]
    preprocess_ms: float
    inference_ms: float

    @property
    def top(self) -> Prediction:
        return self.predictions[0]


def classify(logits: np.ndarray, spec: ClassificationSpec) -> list[Prediction]:
    """Top-k labels of one output row, scores as probabilities."""
    row = logits.reshape(-1).astype(np.float64)
    if len(row) != len(spec.labels):
        raise ModelLoadError(f"model outputs {len(row)} scores for {len(spec.labels)} labels")
    if spec.softmax:
        row = np.exp(row - row.max())
        row /= row.sum()
    order = np.argsort(-row)[: spec.top_k]
    return [Prediction(spec.labels[i], float(row[i])) for i in order]


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


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
        self.infer(np.zeros((manifest.preprocess.height, manifest.preprocess.width, 3), np.uint8))

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

    def infer(self, frame: np.ndarray) -> Inference:
        t0 = time.perf_counter()
        tensor = preprocess(frame, self.manifest.preprocess).astype(self._dtype, copy=False)
        t1 = time.perf_counter()
        (logits, *_) = self._session.run(None, {self._input: tensor})
        t2 = time.perf_counter()
        return Inference(
            classify(logits[0], self.manifest.postprocess), (t1 - t0) * 1e3, (t2 - t1) * 1e3
        )
