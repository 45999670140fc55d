"""Agreement between a serving model and a candidate: the matching, the bound, each task kind."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from agent.contract.manifest import ClassificationSpec, DetectionSpec, ScoreSpec
from agent.inference.agreement import (
    Agreement,
    Comparison,
    compare,
    iou_matrix,
    linear_assignment,
    match_boxes,
    wilson_lower,
)
from agent.inference.postprocess import Prediction

LABELS = tuple(str(d) for d in range(10))
CLS = ClassificationSpec(labels=LABELS)
DET = DetectionSpec(kind="detection", labels=("person", "car", "dog"))
SCORE = ScoreSpec(kind="score", threshold=0.5)


def brute_force(cost: np.ndarray) -> float:
    """The least total cost of any one-to-one assignment of the smaller side."""
    n, m = cost.shape
    if n <= m:
        return min(
            sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n)
        )
    return brute_force(cost.T)


@pytest.mark.parametrize("seed", range(40))
def test_assignment_is_optimal_like_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 6, size=2))
    # Ties matter too: a few integer matrices have many optimal assignments.
    cost = rng.integers(0, 4, shape).astype(float) if seed % 3 == 0 else rng.random(shape)
    pairs = linear_assignment(cost)
    rows, cols = [r for r, _ in pairs], [c for _, c in pairs]
    assert len(pairs) == min(shape)
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    assert sum(cost[r, c] for r, c in pairs) == pytest.approx(brute_force(cost))


def test_assignment_of_nothing() -> None:
    assert linear_assignment(np.zeros((0, 3))) == []
    assert linear_assignment(np.zeros((2, 0))) == []


def test_assignment_avoids_the_greedy_trap() -> None:
    # Greedy takes (0, 0) at 1 and pays 100 for (1, 1); the best is 2 + 2.
    assert linear_assignment(np.array([[1.0, 2.0], [2.0, 100.0]])) == [(0, 1), (1, 0)]


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [(8, 10, 0.49016), (100, 100, 0.96300), (0, 10, 0.0), (80, 100, 0.71122), (1, 1, 0.20654)],
)
def test_wilson_lower_bound_known_values(successes: int, n: int, expected: float) -> None:
    assert wilson_lower(successes, n) == pytest.approx(expected, abs=1e-4)


def test_wilson_lower_bound_without_frames() -> None:
    assert wilson_lower(0, 0) is None


def test_wilson_lower_bound_rises_with_frames_at_the_same_rate() -> None:
    bounds = [wilson_lower(4 * n, 5 * n) for n in (2, 20, 200, 2000)]
    assert bounds == sorted(bounds) and all(b is not None and b < 0.8 for b in bounds)


def test_classification_top1_and_score_delta() -> None:
    same = compare(CLS, CLS, [Prediction("3", 0.9)], [Prediction("3", 0.7)])
    assert same.agree and same.score_delta == pytest.approx(0.2)
    # With top_k = 1 the candidate never scored the serving label: no delta, not a guess.
    flip = compare(CLS, CLS, [Prediction("3", 0.9)], [Prediction("8", 0.6)])
    assert not flip.agree and flip.score_delta is None
    top3 = [Prediction("8", 0.5), Prediction("3", 0.4)]
    assert compare(CLS, CLS, [Prediction("3", 0.9)], top3).score_delta == pytest.approx(0.5)
    assert compare(CLS, CLS, [], []).agree  # both under min_score
    assert not compare(CLS, CLS, [Prediction("3", 0.9)], []).agree


def box(label: str, x: float, y: float, w: float = 100, h: float = 100) -> Prediction:
    return Prediction(label, 0.9, (x, y, x + w, y + h))


def test_iou_matrix() -> None:
    got = iou_matrix([(0, 0, 10, 10), (0, 0, 1, 1)], [(5, 0, 15, 10), (20, 20, 30, 30)])
    assert got == pytest.approx(np.array([[50 / 150, 0], [0, 0]]))
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_detection_matching_is_one_to_one_and_best_overall() -> None:
    # Serving box 0 overlaps both candidates; greedy on the best pair would leave box 1 alone.
    serving = [box("person", 0, 0), box("car", 60, 0)]
    candidate = [box("person", 30, 0), box("car", 80, 0)]
    matches = match_boxes(serving, candidate, 0.3)
    assert [(r, c) for r, c, _ in matches] == [(0, 0), (1, 1)]


def test_detection_agreement_flips_and_counts() -> None:
    serving = [box("person", 0, 0), box("car", 200, 0), box("dog", 400, 0)]
    same = compare(DET, DET, serving, [box("person", 5, 0), box("car", 200, 5), box("dog", 400, 0)])
    assert same.agree and same.matched == same.expected == 3 and same.flips == 0
    flipped = compare(DET, DET, serving, [box("person", 0, 0), box("dog", 200, 0)])
    assert not flipped.agree
    assert (flipped.matched, flipped.expected, flipped.flips, flipped.count_diff) == (2, 3, 1, -1)
    far = compare(DET, DET, serving[:1], [box("person", 60, 0)])  # IoU 0.25 < 0.5
    assert not far.agree and far.matched == 0
    assert compare(DET, DET, serving[:1], [box("person", 60, 0)], iou=0.2).agree
    assert compare(DET, DET, [], []).agree


def test_score_models_agree_on_their_own_side_of_the_threshold() -> None:
    stricter = ScoreSpec(kind="score", threshold=0.8)
    assert compare(SCORE, SCORE, [Prediction("anomaly", 0.6)], [Prediction("anomaly", 0.9)]).agree
    assert not compare(
        SCORE, SCORE, [Prediction("anomaly", 0.6)], [Prediction("normal", 0.4)]
    ).agree
    # 0.7 is over the serving model's 0.5 but under the candidate's own 0.8.
    moved = compare(SCORE, stricter, [Prediction("anomaly", 0.7)], [Prediction("normal", 0.7)])
    assert not moved.agree and moved.score_delta == pytest.approx(0.0)


def test_kinds_must_match() -> None:
    with pytest.raises(ValueError, match="candidate is detection"):
        compare(CLS, DET, [], [])


def test_summary_of_classification() -> None:
    acc = Agreement("classification")
    for i in range(100):
        acc.add(Comparison(agree=i % 5 != 0, score_delta=0.1), float(i), 2.0 * i)
    summary = json.loads(json.dumps(acc.summary()))
    assert summary["frames"] == 100 and summary["agreements"] == 80
    assert summary["agreement"] == 0.8
    assert summary["agreement_lower"] == pytest.approx(0.71122, abs=1e-4)
    assert summary["score_delta"] == pytest.approx(0.1)
    assert summary["latency_ms"]["serving"]["p50"] == pytest.approx(49.5)
    assert summary["latency_ms"]["candidate"]["p99"] == pytest.approx(2 * 98.01)


def test_summary_of_detection() -> None:
    acc = Agreement("detection")
    acc.add(compare(DET, DET, [box("car", 0, 0)], [box("car", 10, 0)]), 1, 1)
    acc.add(compare(DET, DET, [box("car", 0, 0), box("dog", 300, 0)], [box("dog", 0, 0)]), 1, 1)
    s = acc.summary()
    assert (s["frames"], s["agreements"], s["label_flips"]) == (2, 1, 1)
    assert s["matched_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["mean_iou"] == pytest.approx((90 / 110 + 1) / 2, abs=1e-4)
    assert s["count_diff"] == 0.5 and s["count_bias"] == -0.5


def test_summary_without_frames() -> None:
    s = Agreement("score").summary()
    assert s["frames"] == 0 and s["agreement"] is None and s["agreement_lower"] is None
    assert s["latency_ms"]["candidate"] == {"p50": None, "p99": None}
