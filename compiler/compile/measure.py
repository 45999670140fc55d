"""Accuracy and latency of ONNX models with ONNX Runtime, and of torch models in eager mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .export import ort_outputs, ort_session


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
    """Batch-1 latency of ``session.run`` alone; ``threads=0`` lets ORT use every core."""
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: sample[:1]}
    return time_calls(lambda: session.run(None, feed), runs)


@torch.no_grad()
def torch_latency(model: nn.Module, sample: np.ndarray) -> Latency:
    """Eager batch-1 latency on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tensor = torch.from_numpy(sample[:1])
        return time_calls(lambda: model(tensor))
    finally:
        torch.set_num_threads(threads)


def onnx_params(path: Path) -> int:
    """Parameters stored in a float graph's initializers."""
    graph = onnx.load(str(path)).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer if len(t.dims) > 0))


@dataclass(frozen=True)
class StageMetrics:
    params: int | None
    macs: int | None
    file_bytes: int
    accuracy: float
    top1_agreement: float
    ort_p50_ms_1t: float
    ort_p99_ms_1t: float
    ort_p50_ms_all: float
    ort_p99_ms_all: float
    # Accuracy of each class present in the test set, keyed by class index ("0", "1", ...): a
    # budget met on average can hide one class int8 broke.
    per_class_accuracy: dict[str, float] | None = None
    # The held-out images the accuracy is over (its 95% interval needs it), and counts by
    # [true class][predicted class]: which classes a stage confuses, not only how often.
    samples: int | None = None
    confusion: list[list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    logits: np.ndarray
    accuracy: float
    per_class: dict[str, float] | None = None
    confusion: list[list[int]] | None = None


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    """Counts by [true class][predicted class], over ``classes`` classes."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return counts.tolist()


def evaluate(path: Path, x: np.ndarray, y: np.ndarray) -> Evaluation:
    logits = ort_outputs(path, x)
    predicted = logits.argmax(1)
    hits = predicted == y
    per_class = {str(int(c)): round(float(hits[y == c].mean()), 5) for c in np.unique(y)}
    classes = max(int(logits.shape[1]), int(y.max()) + 1) if len(y) else int(logits.shape[1])
    confusion = confusion_matrix(y, predicted, classes) if logits.ndim == 2 else None
    return Evaluation(logits, float(hits.mean()), per_class, confusion)


def stage_metrics(
    path: Path,
    result: Evaluation,
    reference_top1: np.ndarray,
    sample: np.ndarray,
    *,
    params: int | None,
    macs: int | None,
) -> StageMetrics:
    one, every = ort_latency(path, sample, threads=1), ort_latency(path, sample, threads=0)
    return StageMetrics(
        params=params,
        macs=macs,
        file_bytes=path.stat().st_size,
        accuracy=round(result.accuracy, 5),
        top1_agreement=round(float((result.logits.argmax(1) == reference_top1).mean()), 5),
        ort_p50_ms_1t=round(one.p50_ms, 4),
        ort_p99_ms_1t=round(one.p99_ms, 4),
        ort_p50_ms_all=round(every.p50_ms, 4),
        ort_p99_ms_all=round(every.p99_ms, 4),
        per_class_accuracy=result.per_class,
        samples=len(result.logits),
        confusion=result.confusion,
    )
