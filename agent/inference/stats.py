"""Rolling latency figures per pipeline stage, for telemetry and ``edgewise-agent bench``, and
the cumulative latency histogram per stage that the Prometheus endpoint serves."""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

STAGES = ("queue", "preprocess", "inference", "postprocess", "report", "total")

# Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied. From half a
# millisecond (a tiny model on a desktop CPU) to 10 s (a large one on a slow board).
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Histogram:
    """One stage's latencies since start: ``counts[i]`` observations at most ``BUCKETS_S[i]``
    seconds (cumulative, as Prometheus' ``le`` buckets), ``count`` in all, ``sum_s`` seconds."""

    counts: tuple[int, ...]
    count: int
    sum_s: float


class StageStats:
    """The last ``keep`` samples of each stage, in milliseconds, and every sample's bucket."""

    def __init__(self, keep: int = 1000):
        self._lock = threading.Lock()
        self._samples = {stage: deque[float](maxlen=keep) for stage in STAGES}
        # Per stage: observations per bucket (the last one is +Inf) and their sum in seconds.
        self._buckets = {stage: [0] * (len(BUCKETS_S) + 1) for stage in STAGES}
        self._sums = dict.fromkeys(STAGES, 0.0)
        self.frames = 0

    def record(self, **stages_ms: float) -> None:
        with self._lock:
            self.frames += 1
            for stage, value in stages_ms.items():
                self._samples[stage].append(value)
                seconds = value / 1000.0
                # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
                self._buckets[stage][bisect.bisect_left(BUCKETS_S, seconds)] += 1
                self._sums[stage] += seconds

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

    def histograms(self) -> dict[str, Histogram]:
        """Every stage seen so far, with its latencies since start (``Histogram``)."""
        with self._lock:
            raw = {s: (list(b), self._sums[s]) for s, b in self._buckets.items() if any(b)}
        out = {}
        for stage, (per_bucket, sum_s) in raw.items():
            cumulative = tuple(int(c) for c in np.cumsum(per_bucket))
            out[stage] = Histogram(counts=cumulative[:-1], count=cumulative[-1], sum_s=sum_s)
        return out
