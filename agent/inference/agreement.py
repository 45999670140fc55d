"""How far a candidate model agrees with the serving one on the same frames: pure functions and
an accumulator, no threads (the shadow runner in ``agent.control.shadow`` drives them).

Per task kind, as the manifest's ``postprocess.kind`` says:

* classification: the top-1 labels agree; |Δscore| of the serving top label.
* detection: boxes matched one to one at IoU >= ``iou`` (Hungarian matching on IoU, labels
  ignored); a frame agrees when every box of both is matched and no match flips its label.
* score: both values on the same side of their own model's threshold; |Δscore|.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.contract.manifest import (
    ClassificationSpec,
    DetectionSpec,
    EventsSpec,
    PostprocessSpec,
    ScoreSpec,
)
from agent.inference.postprocess import Box, Prediction

Z_95 = 1.96


def linear_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """(row, column) pairs, one per row or column (whichever are fewer), of least total cost:
    the Hungarian method with potentials, O(n²·m) (the agent carries no scipy)."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        return []
    if cost.shape[0] > cost.shape[1]:
        return sorted((r, c) for c, r in linear_assignment(cost.T))
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: the row (1-based) holding column j
    way = np.zeros(m + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0], col = row, 0
        best = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while owner[col] != 0:
            used[col] = True
            free = ~used
            free[0] = False
            reduced = cost[owner[col] - 1] - u[owner[col]] - v[1:]
            better = free[1:] & (reduced < best[1:])
            best[1:][better] = reduced[better]
            way[1:][better] = col
            candidates = np.where(free, best, np.inf)
            nxt = int(np.argmin(candidates))
            delta = candidates[nxt]
            u[owner[used]] += delta
            v[used] -= delta
            best[free] -= delta
            col = nxt
        while col:  # flip the augmenting path back to the root
            prev = int(way[col])
            owner[col] = owner[prev]
            col = prev
    return sorted((int(owner[j]) - 1, j - 1) for j in range(1, m + 1) if owner[j])


def iou_matrix(a: list[Box], b: list[Box]) -> np.ndarray:
    """IoU of every box of ``a`` (rows) with every box of ``b`` (columns), boxes x1, y1, x2, y2."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    p, q = np.asarray(a, np.float64)[:, None, :], np.asarray(b, np.float64)[None, :, :]
    w = np.clip(np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0]), 0, None)
    h = np.clip(np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1]), 0, None)
    inter = w * h
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_q = (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])
    union = area_p + area_q - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(
    serving: list[Prediction], candidate: list[Prediction], iou: float
) -> list[tuple[int, int, float]]:
    """(serving index, candidate index, IoU) of the one-to-one matching of most total IoU among
    pairs at IoU >= ``iou``; labels play no part (a match may flip the label)."""
    overlap = iou_matrix(
        [p.box or (0, 0, 0, 0) for p in serving], [p.box or (0, 0, 0, 0) for p in candidate]
    )
    if not overlap.size:
        return []
    # Pairs under the threshold weigh nothing, so they never displace a real match.
    weight = np.where(overlap >= iou, overlap, 0.0)
    pairs = linear_assignment(-weight)
    return [(r, c, float(overlap[r, c])) for r, c in pairs if overlap[r, c] >= iou]


@dataclass(frozen=True)
class Comparison:
    """One frame's verdict, and the numbers its task kind sums for the means."""

    agree: bool
    score_delta: float | None = None  # classification and score
    matched: int = 0  # detection: matched pairs, of `expected` = max(serving, candidate) boxes
    expected: int = 0
    iou_sum: float = 0.0
    flips: int = 0
    count_diff: int = 0  # candidate boxes − serving boxes


def compare_classification(serving: list[Prediction], candidate: list[Prediction]) -> Comparison:
    """Top-1 labels agree; |Δscore| of the serving top label when the candidate scored it too
    (with top_k = 1: on the frames where they agree)."""
    if not serving or not candidate:
        return Comparison(agree=not serving and not candidate)
    top = serving[0]
    theirs = next((p.score for p in candidate if p.label == top.label), None)
    delta = None if theirs is None else abs(top.score - theirs)
    return Comparison(agree=candidate[0].label == top.label, score_delta=delta)


def compare_detection(
    serving: list[Prediction], candidate: list[Prediction], iou: float
) -> Comparison:
    matches = match_boxes(serving, candidate, iou)
    flips = sum(serving[r].label != candidate[c].label for r, c, _ in matches)
    expected = max(len(serving), len(candidate))
    return Comparison(
        agree=len(matches) == expected and flips == 0,
        matched=len(matches),
        expected=expected,
        iou_sum=sum(i for _, _, i in matches),
        flips=flips,
        count_diff=len(candidate) - len(serving),
    )


def compare_score(
    serving: list[Prediction],
    candidate: list[Prediction],
    serving_spec: ScoreSpec,
    candidate_spec: ScoreSpec,
) -> Comparison:
    """Each value against its own model's threshold: a candidate may move it."""
    if not serving or not candidate:
        return Comparison(agree=not serving and not candidate)
    s, c = serving[0].score, candidate[0].score
    same = (s >= serving_spec.threshold) == (c >= candidate_spec.threshold)
    return Comparison(agree=same, score_delta=abs(s - c))


def compare(
    serving_spec: PostprocessSpec,
    candidate_spec: PostprocessSpec,
    serving: list[Prediction],
    candidate: list[Prediction],
    iou: float = 0.5,
) -> Comparison:
    """One frame's predictions of both models; ValueError when their task kinds differ."""
    if serving_spec.kind != candidate_spec.kind:
        raise ValueError(
            f"the candidate is {candidate_spec.kind}, the serving model {serving_spec.kind}"
        )
    if isinstance(serving_spec, ClassificationSpec | EventsSpec):
        # events: whether both heard the same keyword in this window (usually: none)
        return compare_classification(serving, candidate)
    if isinstance(serving_spec, DetectionSpec):
        return compare_detection(serving, candidate, iou)
    assert isinstance(serving_spec, ScoreSpec) and isinstance(candidate_spec, ScoreSpec)
    return compare_score(serving, candidate, serving_spec, candidate_spec)


def wilson_lower(successes: int, n: int, z: float = Z_95) -> float | None:
    """Lower end of the Wilson score interval of a proportion (95 % at z = 1.96): how low the
    true agreement may be after ``n`` frames. None without frames."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def _percentiles(samples: deque[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.fromiter(samples, float), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def _mean(total: float, n: int, digits: int = 5) -> float | None:
    return round(total / n, digits) if n else None


class Agreement:
    """Comparisons of one candidate against one serving model, summed for the report."""

    def __init__(self, task: str, keep: int = 2000):
        self.task = task
        self.frames = self.agreements = 0
        self.deltas, self.delta_sum = 0, 0.0
        self.matched = self.expected = self.flips = 0
        self.iou_sum = 0.0
        self.count_diff_abs = self.count_diff_sum = 0
        self.serving_ms: deque[float] = deque(maxlen=keep)
        self.candidate_ms: deque[float] = deque(maxlen=keep)

    def add(self, comparison: Comparison, serving_ms: float, candidate_ms: float) -> None:
        self.frames += 1
        self.agreements += comparison.agree
        if comparison.score_delta is not None:
            self.deltas += 1
            self.delta_sum += comparison.score_delta
        self.matched += comparison.matched
        self.expected += comparison.expected
        self.iou_sum += comparison.iou_sum
        self.flips += comparison.flips
        self.count_diff_abs += abs(comparison.count_diff)
        self.count_diff_sum += comparison.count_diff
        self.serving_ms.append(serving_ms)
        self.candidate_ms.append(candidate_ms)

    @property
    def rate(self) -> float | None:
        return self.agreements / self.frames if self.frames else None

    @property
    def lower(self) -> float | None:
        return wilson_lower(self.agreements, self.frames)

    def summary(self) -> dict[str, Any]:
        """JSON-able: counts, agreement and its Wilson lower bound, the task's means, latency."""
        rate, lower = self.rate, self.lower
        out: dict[str, Any] = {
            "task": self.task,
            "frames": self.frames,
            "agreements": self.agreements,
            "agreement": None if rate is None else round(rate, 5),
            "agreement_lower": None if lower is None else round(lower, 5),
        }
        if self.task == "detection":
            out["matched_rate"] = (
                _mean(self.matched, self.expected)
                if self.expected
                else (1.0 if self.frames else None)
            )
            out["mean_iou"] = _mean(self.iou_sum, self.matched)
            out["label_flips"] = self.flips
            out["count_diff"] = _mean(self.count_diff_abs, self.frames)
            out["count_bias"] = _mean(self.count_diff_sum, self.frames)
        else:
            out["score_delta"] = _mean(self.delta_sum, self.deltas)
        out["latency_ms"] = {
            "serving": _percentiles(self.serving_ms),
            "candidate": _percentiles(self.candidate_ms),
        }
        return out
