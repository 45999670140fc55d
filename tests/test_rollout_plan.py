"""The rollout plan as pure values (compiler/rollout/plan.py): waves and their errors, the stable
order devices are taken in, the devices each wave adds, and the abort rules' verdict with the
evidence behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.errors import InputError
from compiler.rollout.plan import (
    FINAL_DEVICE,
    AbortRule,
    DeviceRecord,
    RolloutSpec,
    Wave,
    exponential,
    figures_of,
    judge,
    ordered,
    parse_waves,
    wave_members,
)

ROOT = Path(__file__).resolve().parents[1]
FLEET = [f"cam-{i:02d}" for i in range(40)]


def spec(waves: tuple[Wave, ...], rollout_id: str = "r1") -> RolloutSpec:
    return RolloutSpec(
        id=rollout_id, package="/p", name="digits-cnn", version="1.1.0", target="all",
        waves=waves, created_at=0.0,
    )  # fmt: skip


def rec(device: str, state: str = "succeeded", **figures: float | None) -> DeviceRecord:
    return DeviceRecord.model_validate(
        {"device": device, "wave": 0, "state": state, "figures": figures}
    )


# --- waves ---------------------------------------------------------------------------------------


def test_parse_waves_reads_counts_and_percentages() -> None:
    assert parse_waves("1,10%,50%,100%") == (
        Wave(count=1), Wave(percent=10), Wave(percent=50), Wave(percent=100)
    )  # fmt: skip
    assert parse_waves(" 2 , 25% ") == (Wave(count=2), Wave(percent=25), Wave(percent=100))


def test_a_rollout_always_ends_with_the_whole_target() -> None:
    assert parse_waves("1,5")[-1] == Wave(percent=100)
    assert parse_waves("100%") == (Wave(percent=100),)


@pytest.mark.parametrize("text", ["x", "", "1,,2", "10%%", "-1", "1.5", "%", "10 %x"])
def test_parse_waves_refuses_what_is_not_a_count_or_percentage(text: str) -> None:
    with pytest.raises(InputError, match=r"--waves: .* is not a count or a percentage"):
        parse_waves(text)


@pytest.mark.parametrize("text", ["0", "0%", "150%"])
def test_parse_waves_refuses_sizes_out_of_range(text: str) -> None:
    # a pydantic ValidationError (a ValueError); `edgewise rollout create` words it in one line
    with pytest.raises(ValueError, match=r"greater than|less than"):
        parse_waves(text)


def test_wave_sizes_round_up_and_never_pass_the_fleet() -> None:
    assert Wave(count=5).size(3) == 3
    assert Wave(percent=10).size(40) == 4
    assert Wave(percent=10).size(41) == 5  # ceil
    assert Wave(percent=1).size(3) == 1  # at least one device
    assert Wave(percent=100).size(0) == 0
    assert [w.describe() for w in parse_waves("1,10%")] == ["1", "10%", "100%"]


def test_exponential_grows_by_the_factor_then_takes_everyone() -> None:
    waves = exponential(1, 2)
    assert [w.count for w in waves[:5]] == [1, 2, 4, 8, 16]
    assert waves[-1] == Wave(percent=100)
    assert [w.count for w in exponential(3, 1.5)[:4]] == [3, 4, 6, 10]
    assert len(exponential(1, 1.01)) <= 33  # capped, not a wave per device


@pytest.mark.parametrize(("base", "factor"), [(0, 2), (1, 1), (1, 0.5), (-3, 2)])
def test_exponential_refuses_a_base_or_factor_that_does_not_grow(base: int, factor: float) -> None:
    with pytest.raises(InputError, match="--exponential"):
        exponential(base, factor)


# --- the stable order ----------------------------------------------------------------------------


def test_the_order_is_stable_and_independent_of_the_input_order() -> None:
    first = ordered("r1", FLEET)
    assert ordered("r1", list(reversed(FLEET))) == first
    assert ordered("r1", set(FLEET)) == first
    assert sorted(first) == sorted(FLEET)  # every device exactly once
    assert first != sorted(FLEET)


def test_the_order_differs_per_rollout() -> None:
    orders = {tuple(ordered(f"rollout-{n}", FLEET)) for n in range(5)}
    assert len(orders) == 5
    firsts = {ordered(f"rollout-{n}", FLEET)[0] for n in range(20)}
    assert len(firsts) > 5  # no device is always the first one exposed


def test_the_order_is_the_same_in_another_process() -> None:
    """A restarted controller must take the same devices: no per-process hash seed."""
    code = (
        "import json,sys; from compiler.rollout.plan import ordered; "
        "print(json.dumps(ordered('r1', json.loads(sys.argv[1]))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(FLEET)],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    ).stdout  # fmt: skip
    assert json.loads(out) == ordered("r1", FLEET)


# --- wave members --------------------------------------------------------------------------------


def test_wave_members_are_cumulative_without_repeats() -> None:
    plan = spec(parse_waves("1,10%,50%,100%"))
    members = wave_members(plan, FLEET)
    assert [len(m) for m in members] == [1, 3, 16, 20]  # reaching 1, 4, 20, 40
    assert [d for wave in members for d in wave] == ordered("r1", FLEET)


def test_a_small_fleet_leaves_some_waves_empty_and_still_reaches_all() -> None:
    members = wave_members(spec(parse_waves("1,10%,50%,100%")), FLEET[:3])
    assert [len(m) for m in members] == [1, 0, 1, 1]
    assert wave_members(spec(parse_waves("5,10")), FLEET[:3]) == [ordered("r1", FLEET[:3]), [], []]
    assert wave_members(spec(parse_waves("1")), []) == [[], []]


@given(
    fleet=st.integers(min_value=0, max_value=300),
    sizes=st.lists(
        st.one_of(
            st.builds(Wave, count=st.integers(1, 400)),
            st.builds(Wave, percent=st.floats(0.5, 100, allow_nan=False)),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_every_device_is_in_exactly_one_wave(fleet: int, sizes: list[Wave]) -> None:
    devices = [f"d{i}" for i in range(fleet)]
    plan = spec((*sizes, Wave(percent=100)))
    members = wave_members(plan, devices)
    flat = [d for wave in members for d in wave]
    assert flat == ordered("r1", devices)  # each once, in the stable order
    assert len(members) == len(plan.waves)
    assert members[-1] == [] or flat[-1] == members[-1][-1]


# --- figures and the verdict ---------------------------------------------------------------------


def test_figures_count_only_devices_that_reported() -> None:
    records = [
        rec("a", "succeeded", error_rate=0.01, p99_ms=12.0, agreement=0.97),
        rec("b", "failed", error_rate=0.2, p99_ms=40.0),
        rec("c", "rolled_back", agreement=0.80),
        rec("d", "no_answer"),
        rec("e", "offline"),  # skipped: not in any figure
        rec("f", "sent", p99_ms=999.0),  # still running: not judged yet
        rec("g", "staged", agreement=0.1),
        rec("h", "pending"),
    ]
    figures = figures_of(records)
    assert figures == {
        "devices": 4, "failed_pct": 50.0, "no_answer_pct": 25.0, "error_rate": 0.2,
        "p99_ms": 40.0, "agreement": 0.80,
    }  # fmt: skip
    assert set(FINAL_DEVICE) == {"succeeded", "failed", "no_answer", "offline", "rolled_back"}


def test_figures_of_nothing_reported_are_none() -> None:
    assert figures_of([rec("a", "sent"), rec("b", "offline")]) == {
        "devices": 0, "failed_pct": None, "no_answer_pct": None, "error_rate": None,
        "p99_ms": None, "agreement": None,
    }  # fmt: skip
    assert figures_of([rec("a")])["p99_ms"] is None  # reported, but no such figure


def rule(metric: str, op: str, threshold: float, min_devices: int = 1) -> AbortRule:
    return AbortRule.model_validate(
        {"metric": metric, "op": op, "threshold": threshold, "min_devices": min_devices}
    )


@pytest.mark.parametrize(
    ("the_rule", "breaks"),
    [
        (rule("failed_pct", ">", 0), True),  # 1 of 4 failed: 25%
        (rule("failed_pct", ">", 25), False),
        (rule("failed_pct", ">=", 25), True),
        (rule("no_answer_pct", ">=", 25), True),
        (rule("no_answer_pct", ">", 25), False),
        (rule("error_rate", ">", 0.05), True),  # worst 0.1
        (rule("error_rate", ">", 0.1), False),
        (rule("p99_ms", ">=", 80), True),  # worst 80
        (rule("p99_ms", ">", 80), False),
        (rule("agreement", "<", 0.9), True),  # lowest 0.85
        (rule("agreement", "<", 0.85), False),
        (rule("agreement", "<=", 0.85), True),
    ],
)
def test_each_metric_and_operator(the_rule: AbortRule, breaks: bool) -> None:
    records = [
        rec("a", "succeeded", error_rate=0.0, p99_ms=20.0, agreement=0.95),
        rec("b", "succeeded", error_rate=0.1, p99_ms=80.0, agreement=0.85),
        rec("c", "failed"),
        rec("d", "no_answer"),
    ]
    verdict = judge([the_rule], records)
    assert (verdict is not None) == breaks, verdict


def test_a_rule_waits_for_min_devices() -> None:
    slow = rule("p99_ms", ">=", 50, min_devices=3)
    records = [rec("a", p99_ms=90.0), rec("b", p99_ms=95.0), rec("c", "sent")]
    assert judge([slow], records) is None  # two reported: not yet
    records[2] = rec("c", p99_ms=10.0)
    verdict = judge([slow], records)
    assert verdict is not None
    assert verdict.reason == "p99_ms 95 >= 50 over 3 devices"


def test_the_evidence_names_the_devices_and_figures() -> None:
    records = [
        rec("cam-1", "succeeded", error_rate=0.0, p99_ms=11.0),
        DeviceRecord(device="cam-2", wave=0, state="failed", reason="golden check failed"),
        rec("cam-3", "no_answer"),
        rec("cam-4", "sent"),
    ]
    verdict = judge([rule("no_answer_pct", ">", 50), rule("failed_pct", ">", 0)], records)
    assert verdict is not None
    assert verdict.reason == "failed_pct 33.3333 > 0 over 3 devices"  # the first broken rule
    assert verdict.evidence["rule"] == "failed_pct > 0 (min 1 devices)"
    assert verdict.evidence["figures"] == figures_of(records)
    assert verdict.evidence["devices"] == [
        {"device": "cam-1", "state": "succeeded", "reason": "", "error_rate": 0.0, "p99_ms": 11.0},
        {"device": "cam-2", "state": "failed", "reason": "golden check failed"},
        {"device": "cam-3", "state": "no_answer", "reason": ""},
    ]
    json.dumps(verdict.evidence)  # stored as JSON as it is


def test_no_rule_broken_is_no_verdict() -> None:
    records = [rec("a", p99_ms=10.0, error_rate=0.0, agreement=0.99)]
    rules = [rule("failed_pct", ">", 0), rule("p99_ms", ">", 50), rule("agreement", "<", 0.9)]
    assert judge(rules, records) is None
    assert judge(rules, []) is None
