"""How sure a compile report's accuracies are: the 95% Wilson interval of each, and the floor
of the accuracy axis, so that a chart never zooms in until two images look like a cliff.

Standard library only: the terminal table, the HTML page and the console all use it.
"""

from __future__ import annotations

import math

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
AXIS_MARGIN = 2.0  # points below the lowest lower bound
AXIS_STEP = 5.0  # the floor is a multiple of this many points
AXIS_MAX_FLOOR = 90.0  # the axis always spans at least 10 points


def wilson(accuracy: float, samples: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``accuracy`` measured on ``samples`` images, as fractions.

    Wilson rather than the normal approximation: near 100% (where a good model sits) the normal
    interval runs past 1 and collapses to nothing at 100%; Wilson's does neither."""
    if samples <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, accuracy))
    denominator = 1 + z * z / samples
    centre = (p + z * z / (2 * samples)) / denominator
    half = z * math.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_floor(lower_bounds_percent: list[float]) -> float:
    """Where the accuracy axis starts, in percent: the lowest lower bound less ``AXIS_MARGIN``,
    rounded down to a multiple of ``AXIS_STEP``, never above ``AXIS_MAX_FLOOR`` nor below 0.
    The axis ends at 100%, so it always shows at least 10 points and every interval whole."""
    if not lower_bounds_percent:
        return 0.0
    floor = math.floor((min(lower_bounds_percent) - AXIS_MARGIN) / AXIS_STEP) * AXIS_STEP
    return max(0.0, min(AXIS_MAX_FLOOR, floor))


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point: the difference is then within the noise of the
    held-out set, however it looks."""
    return a[0] <= b[1] and b[0] <= a[1]
