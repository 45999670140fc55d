"""Accuracy and latency of ONNX models with ONNX Runtime, and of torch models in eager mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import ort_session


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float


def time_calls(call: Callable[[], object], runs: int = 200, warmup: int = 20) -> Latency:
    for _ in range(warmup):
        call()
    samples = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        call()
        samples[i] = time.perf_counter() - t0
    return Latency(float(np.percentile(samples, 50) * 1e3), float(np.percentile(samples, 99) * 1e3))


def ort_latency(path: Path, sample: np.ndarray, threads: int = 1, runs: int = 200) -> Latency:
    """Batch-1 latency of ``session.run`` alone."""
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: sample[:1]}
    return time_calls(lambda: session.run(None, feed), runs)
