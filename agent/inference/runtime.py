"""An ONNX Runtime session bound to its manifest: frame or sensor window in, predictions out.

How a model is opened (execution providers, threads, graph optimisation) is written here once,
for the serving process and the probe child alike; so is loading a package to serve
(:func:`load_package`: load, warm up, golden check), for boot and every switch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.config import RuntimeConfig
from agent.contract import (
    LogMelSpec,
    Manifest,
    Package,
    PreprocessSpec,
    SensorSpec,
    clip,
    to_tensor,
)
from agent.errors import ModelLoadError
from agent.inference.golden import check_golden
from agent.inference.onnxrt import ort
from agent.inference.postprocess import Prediction, postprocess


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


def choose_providers(wanted: Sequence[str]) -> list[str]:
    """The configured execution providers this ONNX Runtime build has, in order; CPU if none."""
    available = set(ort.get_available_providers())
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def open_session(model_path: Path | str, config: RuntimeConfig) -> ort.InferenceSession:
    """An ONNX Runtime session for the model, as ``config`` asks (ORT's own errors, untyped)."""
    return ort.InferenceSession(
        str(model_path), session_options(config), providers=choose_providers(config.providers)
    )


def blank_sample(spec: PreprocessSpec | SensorSpec | LogMelSpec) -> np.ndarray:
    """An all-zero frame or window of the kind the spec takes (for warm-up)."""
    if isinstance(spec, LogMelSpec):
        return np.zeros(spec.window, np.float32)
    if isinstance(spec, SensorSpec):
        return np.zeros((spec.window, spec.channels), np.float32)
    return np.zeros((spec.height, spec.width, 3), np.uint8)


class ModelSession:
    """Loads the model, checks its input against the manifest, and warms it up.

    The child probe has vetted the candidate before the serving process loads it; still,
    whatever goes wrong here is a ModelLoadError and nothing else, so the caller's handling is
    the whole story."""

    def __init__(self, model_path: Path, manifest: Manifest, config: RuntimeConfig):
        self.manifest = manifest
        what = f"{manifest.name} {manifest.version}"
        try:
            self._load(model_path, config)
        except ModelLoadError:
            raise
        except Exception as exc:  # ORT raises its own untyped errors; numpy and postprocess too
            raise ModelLoadError(f"{what}: cannot load: {clip(exc, 200)}") from exc

    def _load(self, model_path: Path, config: RuntimeConfig) -> None:
        manifest = self.manifest
        self._session = open_session(model_path, config)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != manifest.input.name:
            names = [i.name for i in inputs]
            raise ModelLoadError(
                f"model inputs {clip(names, 100)} do not match manifest {manifest.input.name!r}"
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
        try:
            check_golden(self._session, self._input, self.manifest, golden)
        except ModelLoadError:
            raise
        except Exception as exc:  # ORT's errors are untyped
            raise ModelLoadError(f"golden inputs do not run: {clip(exc, 200)}") from exc

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


def load_package(package: Package, config: RuntimeConfig) -> ModelSession:
    """The package's model loaded, warmed up and golden-checked, ready to serve: the one way a
    package becomes a session, at boot and at every switch. ModelLoadError when it cannot."""
    session = ModelSession(package.model_path, package.manifest, config)
    session.check_golden(package.golden_path)
    return session
