"""A rollout as ``edgewise rollout status`` and ``list`` show it: its state and wave, how many
devices of each wave are in each state, and when it was aborted why, with the evidence (the
rule, the wave's figures and the devices behind them).

Pure functions over what the store returns, so the output is testable without a database.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, get_args

from .plan import DeviceRecord, DeviceState, RolloutSpec
from .store import Rollout

STATES: tuple[str, ...] = get_args(DeviceState)
_SHORT = {"no_answer": "no_ans", "rolled_back": "rolled", "succeeded": "ok"}


def criteria_text(spec: RolloutSpec) -> str:
    text = "passed probation"
    if spec.criteria.agreement is not None:
        text += (
            f", shadow agreement ≥ {spec.criteria.agreement:g} over "
            f"≥ {spec.criteria.min_frames} frames"
        )
    return f"{text}; answer within {spec.answer_s:g} s"


def wave_counts(spec: RolloutSpec, records: Mapping[str, DeviceRecord]) -> list[dict[str, Any]]:
    """Per wave: its cumulative size as asked, the devices it took, and how many per state."""
    counts: list[Counter[str]] = [Counter() for _ in spec.waves]
    for record in records.values():
        if 0 <= record.wave < len(counts):
            counts[record.wave][record.state] += 1
    return [
        {
            "wave": index + 1,
            "size": wave.describe(),
            "devices": sum(counts[index].values()),
            "states": {s: counts[index][s] for s in STATES if counts[index][s]},
        }
        for index, wave in enumerate(spec.waves)
    ]


def as_json(rollout: Rollout, records: Mapping[str, DeviceRecord]) -> dict[str, Any]:
    spec = rollout.spec
    return {
        "id": spec.id,
        "state": rollout.state,
        "wave": rollout.wave + 1,
        "waves": len(spec.waves),
        "name": spec.name,
        "version": spec.version,
        "package": spec.package,
        "target": spec.target,
        "criteria": spec.criteria.model_dump(mode="json"),
        "rules": [rule.model_dump(mode="json") for rule in spec.rules],
        "answer_s": spec.answer_s,
        "created_at": spec.created_at,
        "updated_at": rollout.updated_at,
        "reason": rollout.reason,
        "evidence": rollout.evidence,
        "per_wave": wave_counts(spec, records),
        "devices": [records[d].model_dump(mode="json") for d in sorted(records)],
    }


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def status_lines(rollout: Rollout, records: Mapping[str, DeviceRecord]) -> list[str]:
    spec = rollout.spec
    lines = [
        f"rollout {spec.id}: {spec.name} {spec.version} to {spec.target}, {rollout.state}, "
        f"wave {rollout.wave + 1} of {len(spec.waves)}",
        f"package: {spec.package}",
        f"created {_when(spec.created_at)}, updated {_when(rollout.updated_at)}",
        f"success: {criteria_text(spec)}",
        "abort if: " + "; ".join(rule.describe() for rule in spec.rules),
        _table_header(),
    ]
    waves = wave_counts(spec, records)
    # --exponential makes waves up to 65536 devices: the ones past the next are one line
    reached = max([rollout.wave, *(r.wave for r in records.values())]) + 2
    for wave in waves[:reached]:
        cells = [str(wave["states"].get(s, 0)) for s in STATES]
        marker = "*" if wave["wave"] == rollout.wave + 1 else " "
        lines.append(
            f"{marker}{wave['wave']:<4} {wave['size']:>6} {wave['devices']:>7} "
            + " ".join(f"{c:>7}" for c in cells)
        )
    if len(waves) > reached:
        more = len(waves) - reached
        lines.append(f"  … {more} more wave{'s' if more > 1 else ''}, up to {waves[-1]['size']}")
    if rollout.state in ("aborted", "paused") or rollout.reason:
        lines.append(f"{rollout.state}: {rollout.reason or '(no reason given)'}")
    lines.extend(evidence_lines(rollout.evidence))
    return lines


def _table_header() -> str:
    names = " ".join(f"{_SHORT.get(s, s):>7}" for s in STATES)
    return f" {'wave':<4} {'size':>6} {'devices':>7} {names}"


def evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    """The rule, the wave's figures, then one line per device with its state and figures."""
    lines = []
    if "rule" in evidence:
        lines.append(f"  rule: {evidence['rule']}")
    figures = evidence.get("figures")
    if isinstance(figures, Mapping):
        lines.append("  figures: " + ", ".join(f"{k} {_number(v)}" for k, v in figures.items()))
    devices = evidence.get("devices")
    for entry in devices if isinstance(devices, list) else []:
        if not isinstance(entry, Mapping):
            continue
        known = {"device", "state", "reason"}
        extra = ", ".join(f"{k} {_number(v)}" for k, v in entry.items() if k not in known)
        reason = f" ({entry['reason']})" if entry.get("reason") else ""
        lines.append(
            f"  {entry.get('device', '?')} {entry.get('state', '?')}{reason}"
            + (f": {extra}" if extra else "")
        )
    for key, value in evidence.items():
        if key not in ("rule", "figures", "devices"):
            lines.append(f"  {key}: {_number(value)}")
    return lines


def list_lines(rollouts: list[Rollout]) -> list[str]:
    rows = [("ID", "STATE", "WAVE", "PACKAGE", "TARGET", "CREATED")]
    for r in rollouts:
        spec = r.spec
        rows.append(
            (
                spec.id,
                r.state,
                f"{r.wave + 1}/{len(spec.waves)}",
                f"{spec.name} {spec.version}",
                spec.target,
                _when(spec.created_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
