"""An ONNX Runtime session bound to its manifest: frame or sensor window in, predictions out.

How a model is opened (execution providers, threads, graph optimisation) is written here once,
for the serving process and the probe child alike; so is loading a package to serve
(:func:`load_package`: load, warm up, golden check), for boot and every switch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import RuntimeConfig
from agent.contract import (
    AnySpec,
    LogMelSpec,
    Manifest,
    Package,
    PreprocessSpec,
    SensorSpec,
    WaveformSpec,
    clip,
    preprocess_into,
    to_tensor,
)
from agent.errors import ModelLoadError
from agent.inference.backends import (
    DEFAULT,
    Runner,
    open_runner,
    read_choice,
    serving_backend,
)
from agent.inference.events import Postprocessor
from agent.inference.golden import check_golden
from agent.inference.postprocess import Prediction
from agent.inference.state import FeedError, feeder_for


@dataclass(frozen=True)
class Inference:
    predictions: list[Prediction]
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def top(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None


def open_session(model_path: Path | str, config: RuntimeConfig, backend: str = DEFAULT) -> Runner:
    """The model opened with ``backend``, as ``config`` asks (the backend's own errors, untyped)."""
    return open_runner(model_path, config, backend)


def blank_sample(spec: AnySpec) -> np.ndarray:
    """An all-zero frame or window of the kind the spec takes (for warm-up)."""
    if isinstance(spec, LogMelSpec | WaveformSpec):
        return np.zeros(spec.window, np.float32)
    if isinstance(spec, SensorSpec):
        return np.zeros((spec.window, spec.channels), np.float32)
    return np.zeros((spec.height, spec.width, 3), np.uint8)


class ModelSession:
    """Loads the model, checks its input against the manifest, and warms it up.

    The child probe has vetted the candidate before the serving process loads it; still,
    whatever goes wrong here is a ModelLoadError and nothing else, so the caller's handling is
    the whole story."""

    def __init__(
        self, model_path: Path, manifest: Manifest, config: RuntimeConfig, backend: str = DEFAULT
    ):
        self.manifest = manifest
        self.backend = backend
        # every backend's figures from the probe that chose this one (None: not chosen by one)
        self.measured: dict[str, Any] | None = None
        what = f"{manifest.name} {manifest.version}"
        try:
            self._load(model_path, config)
        except ModelLoadError:
            raise
        except Exception as exc:  # ORT raises its own untyped errors; numpy and postprocess too
            raise ModelLoadError(f"{what}: cannot load: {clip(exc, 200)}") from exc

    def _load(self, model_path: Path, config: RuntimeConfig) -> None:
        manifest = self.manifest
        self._session = open_session(model_path, config, self.backend)
        try:
            self._feeder = feeder_for(self._session, manifest)
        except FeedError as exc:
            raise ModelLoadError(str(exc)) from None
        self._post = Postprocessor(manifest.postprocess, manifest.preprocess)
        self._dtype = np.dtype(manifest.input.dtype)
        self._buffer: np.ndarray | None = None  # a frame's tensor, reused for every frame
        for _ in range(max(1, config.warmup_runs)):
            self.infer(blank_sample(manifest.preprocess))
        self.reset()  # warm-up windows are no part of the stream

    @property
    def runner(self) -> Runner:
        """The backend's runner itself (``edgewise-agent bench`` times its calls)."""
        return self._session

    def reset(self) -> None:
        """A new stream (a file looped, live audio resumed after a gap): a recurrent model's
        state, the audio context and the events' memory start again."""
        self._feeder.reset()
        self._post.reset()

    def check_golden(self, golden: Path | None) -> None:
        """Run the package's golden inputs; raise ModelLoadError unless the outputs match."""
        if golden is None:
            return
        try:
            check_golden(self._session, self.manifest, golden)
        except ModelLoadError:
            raise
        except Exception as exc:  # ORT's errors are untyped
            raise ModelLoadError(f"golden inputs do not run: {clip(exc, 200)}") from exc

    def _tensor(self, sample: np.ndarray) -> np.ndarray:
        """The model's input: a frame into this session's one buffer (the runner binds it where
        it lies), anything else through :func:`to_tensor`."""
        spec = self.manifest.preprocess
        if isinstance(spec, PreprocessSpec) and np.dtype(spec.dtype) == self._dtype:
            if self._buffer is None:
                self._buffer = np.empty([d or 1 for d in spec.input_shape(1)], self._dtype)
            return preprocess_into(sample, spec, self._buffer)
        return to_tensor(sample, spec).astype(self._dtype, copy=False)

    def infer(self, sample: np.ndarray, at: float | None = None) -> Inference:
        """A frame (H×W[×3] uint8), a sensor window (window×channels) or an audio window to
        predictions; ``at`` is the window's stream time in seconds (events debounce on it).
        Not thread-safe: a session serves one stream from one thread."""
        t0 = time.perf_counter()
        tensor = self._feeder.with_context(self._tensor(sample))
        t1 = time.perf_counter()
        outputs = self._feeder.run(self._session, tensor)
        t2 = time.perf_counter()
        predictions = self._post(outputs, sample.shape, at)
        t3 = time.perf_counter()
        return Inference(predictions, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)


def load_package(package: Package, config: RuntimeConfig) -> ModelSession:
    """The package's model loaded, warmed up and golden-checked, ready to serve: the one way a
    package becomes a session, at boot and at every switch. It runs on the backend the probe
    chose for it on this board (``auto``) or the configured one. ModelLoadError when it cannot."""
    choice = read_choice(package.root)
    backend = serving_backend(config, choice.get("backend"))
    session = ModelSession(package.model_path, package.manifest, config, backend)
    session.check_golden(package.golden_path)
    session.measured = choice.get("backends") if backend == choice.get("backend") else None
    return session
