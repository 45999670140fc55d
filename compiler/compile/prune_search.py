"""``--prune auto``: the most pruning whose int8 model keeps the accuracy budget, and the latency
cap when one is given, found by bisection over the channel ratio.

Each trial prunes, recovers, exports, quantizes and measures one ratio (``try_ratio``); a ratio
passes when the int8 model's top-1 is within ``--max-accuracy-drop`` points of fp32 and its
one-thread latency is within ``--max-latency-ms``. Accuracy falls as the ratio grows, so
bisection finds the boundary in a few trials; every trial is kept for the report's curve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .options import CompileOptions

MAX_RATIO = 0.875  # beyond this few channels are left in a layer: recovery cannot bring it back
STEPS = 3  # trials: ratios 0.44, then 0.66 or 0.22, then one more between


@dataclass(frozen=True)
class Trial:
    """One ratio tried: its int8 model's figures, whether it passed, and why not."""

    ratio: float
    accuracy: float | None  # int8 top-1; None when the trial failed before quantizing
    drop_points: float | None
    p50_ms_1t: float | None
    macs: int | None
    passed: bool
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Search:
    trials: list[Trial]  # in the order they ran
    chosen: float | None  # the largest ratio that passed; None: none did (not pruned)

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "trials": [t.as_dict() for t in self.trials]}


def bisect(try_ratio: Callable[[float], Trial], steps: int = STEPS) -> Search:
    """The largest passing ratio in (0, MAX_RATIO] that ``steps`` bisection trials find."""
    low, high = 0.0, MAX_RATIO
    trials: list[Trial] = []
    chosen = None
    for _ in range(steps):
        mid = round((low + high) / 2, 4)
        trial = try_ratio(mid)
        trials.append(trial)
        if trial.passed:
            chosen, low = mid, mid
        else:
            high = mid
    return Search(trials, chosen)


def judge(
    ratio: float,
    accuracy: float,
    drop: float,
    p50_ms: float,
    macs: int | None,
    options: CompileOptions,
) -> Trial:
    """A trial's verdict: the int8 model within the accuracy budget and the latency cap."""
    reason = ""
    if drop > options.max_accuracy_drop:
        reason = f"{drop:.2f} points below fp32"
    elif options.max_latency_ms is not None and p50_ms > options.max_latency_ms:
        reason = f"p50 {p50_ms:.3f} ms over {options.max_latency_ms} ms"
    return Trial(ratio, accuracy, drop, p50_ms, macs, not reason, reason)
