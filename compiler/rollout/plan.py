"""What a rollout is, as plain values and pure functions: its waves, the stable order devices are
taken in, its success criteria and abort rules, and the verdict of the rules over a wave.

Nothing here talks to a broker or a database, so every rule is testable alone.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from compiler.errors import InputError

Metric = Literal["failed_pct", "no_answer_pct", "error_rate", "p99_ms", "agreement"]
Op = Literal[">", ">=", "<", "<="]
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
RolloutState = Literal["running", "paused", "aborted", "done"]
# pending: not yet in a wave; sent: its manifest is out; staged: shadowing (agreement criteria);
# succeeded: passed probation (and agreement); failed: rejected or rolled back by the device;
# no_answer: nothing final within the deadline; offline: not online when its wave started;
# rolled_back: rolled back by the rollout's abort.
DeviceState = Literal[
    "pending", "sent", "staged", "succeeded", "failed", "no_answer", "offline", "rolled_back"
]
FINAL_DEVICE = ("succeeded", "failed", "no_answer", "offline", "rolled_back")
WAVE = re.compile(r"^(\d+)(%?)$")


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Wave(_Value):
    """How many devices a wave reaches in all (cumulative): a count or a share of the fleet."""

    count: int | None = Field(default=None, ge=1)
    percent: float | None = Field(default=None, gt=0, le=100)

    def size(self, fleet: int) -> int:
        if self.count is not None:
            return min(self.count, fleet)
        assert self.percent is not None
        return min(fleet, max(1, -(-int(self.percent * fleet) // 100)))  # ceil, at least one

    def describe(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


class AbortRule(_Value):
    """Abort when ``metric op threshold`` over the current wave's devices that reported, once
    at least ``min_devices`` of them did."""

    metric: Metric
    op: Op
    threshold: float
    min_devices: int = Field(default=1, ge=1)

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g} (min {self.min_devices} devices)"


class Criteria(_Value):
    """When a device succeeded: it passed probation; with ``agreement``, the candidate first ran
    as a shadow and its agreement's lower bound reached this over ``min_frames`` frames."""

    agreement: float | None = Field(default=None, gt=0, le=1)
    min_frames: int = Field(default=100, ge=1)


DEFAULT_RULES = (AbortRule(metric="failed_pct", op=">", threshold=0.0),)


class RolloutSpec(_Value):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    package: str  # the package folder, as the controller's machine sees it
    name: str
    version: str
    target: str  # device:ID, group:G or all
    waves: tuple[Wave, ...] = Field(min_length=1)
    criteria: Criteria = Criteria()
    rules: tuple[AbortRule, ...] = DEFAULT_RULES
    answer_s: float = Field(default=300.0, gt=0, description="a device's deadline in its wave")
    created_at: float


class DeviceRecord(_Value):
    device: str
    wave: int  # the wave that took it (0-based)
    state: DeviceState = "pending"
    figures: dict[str, float | int | None] = Field(default_factory=dict)
    reason: str = ""
    since: float = 0.0  # when it entered this state


class Abort(_Value):
    reason: str
    evidence: dict[str, object]


def parse_waves(text: str) -> tuple[Wave, ...]:
    """``1,10%,50%,100%``: cumulative sizes, rising, the last reaching the whole fleet."""
    waves = []
    for part in text.split(","):
        match = WAVE.match(part.strip())
        if match is None:
            raise InputError(
                f"--waves: {part.strip()!r} is not a count or a percentage (1,10%,100%)"
            )
        number, percent = match.groups()
        if int(number) == 0 or (percent and int(number) > 100):
            raise InputError(f"--waves: {part.strip()!r}: a wave is 1 device or more, 1% to 100%")
        waves.append(Wave(percent=float(number)) if percent else Wave(count=int(number)))
    if waves[-1].percent != 100:
        waves.append(Wave(percent=100.0))  # a rollout ends with the whole target
    return tuple(waves)


def exponential(base: int, factor: float) -> tuple[Wave, ...]:
    """``base``, ``base×factor``, ``base×factor²``… devices, then the whole fleet."""
    if base < 1 or factor <= 1:
        raise InputError("--exponential: base must be at least 1 and factor over 1 (e.g. 1,2)")
    counts: list[Wave] = []
    size = float(base)
    while size < 100_000 and len(counts) < 32:
        counts.append(Wave(count=int(size)))
        size *= factor
    return (*counts, Wave(percent=100.0))


def ordered(rollout_id: str, devices: Iterable[str]) -> list[str]:
    """A stable order, the same for every run of the controller and different per rollout, so
    that no device is always first."""
    return sorted(devices, key=lambda d: hashlib.sha256(f"{rollout_id}\0{d}".encode()).digest())


def wave_members(spec: RolloutSpec, devices: Sequence[str]) -> list[list[str]]:
    """The devices each wave adds, in order (a later wave never repeats an earlier one's)."""
    order = ordered(spec.id, devices)
    members, taken = [], 0
    for wave in spec.waves:
        size = max(taken, wave.size(len(order)))
        members.append(order[taken:size])
        taken = size
    return members


def figures_of(records: Sequence[DeviceRecord]) -> dict[str, float | None]:
    """The wave's figures the rules read, over devices that reported (a final state)."""
    done = [r for r in records if r.state in FINAL_DEVICE and r.state != "offline"]
    n = len(done)

    def worst(key: str, lowest: bool = False) -> float | None:
        values = [float(v) for r in done if isinstance(v := r.figures.get(key), (int, float))]
        if not values:
            return None
        return min(values) if lowest else max(values)

    return {
        "devices": n,
        "failed_pct": 100.0 * sum(r.state in ("failed", "rolled_back") for r in done) / n
        if n
        else None,
        "no_answer_pct": 100.0 * sum(r.state == "no_answer" for r in done) / n if n else None,
        "error_rate": worst("error_rate"),
        "p99_ms": worst("p99_ms"),
        "agreement": worst("agreement", lowest=True),
    }


def judge(rules: Sequence[AbortRule], records: Sequence[DeviceRecord]) -> Abort | None:
    """The first rule the wave breaks, with the figures and the devices behind it; else None."""
    figures = figures_of(records)
    reported = int(figures["devices"] or 0)
    for rule in rules:
        value = figures.get(rule.metric)
        if value is None or reported < rule.min_devices:
            continue
        if OPS[rule.op](value, rule.threshold):
            bad = [
                {"device": r.device, "state": r.state, "reason": r.reason, **r.figures}
                for r in records
                if r.state in ("failed", "no_answer", "rolled_back") or r.figures
            ]
            why = f"{rule.metric} {value:g} {rule.op} {rule.threshold:g} over {reported} devices"
            return Abort(
                reason=why,
                evidence={"rule": rule.describe(), "figures": figures, "devices": bad},
            )
    return None
