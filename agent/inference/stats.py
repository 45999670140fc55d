"""Rolling latency figures per pipeline stage, for telemetry and ``edgewise-agent bench``."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

STAGES = ("queue", "preprocess", "inference", "postprocess", "report", "total")


class StageStats:
    """The last ``keep`` samples of each stage, in milliseconds."""

    def __init__(self, keep: int = 1000):
        self._lock = threading.Lock()
        self._samples = {stage: deque[float](maxlen=keep) for stage in STAGES}
        self.frames = 0

    def record(self, **stages_ms: float) -> None:
        with self._lock:
            self.frames += 1
            for stage, value in stages_ms.items():
                self._samples[stage].append(value)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"p50": ms, "p99": ms, "mean": ms}}`` over the kept samples."""
        with self._lock:
            snapshot = {k: np.fromiter(v, float) for k, v in self._samples.items() if v}
        return {
            stage: {
                "p50": round(float(np.percentile(values, 50)), 4),
                "p99": round(float(np.percentile(values, 99)), 4),
                "mean": round(float(values.mean()), 4),
            }
            for stage, values in snapshot.items()
        }
