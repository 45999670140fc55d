"""The packages in ``--packages DIR`` (one folder each, as ``edgewise compile`` writes them)
with the compile report their manifest carries, and the difference between two of them.

What is shown comes from the manifest's ``metrics`` (``CompileReport.as_metrics()``): the served
stage's accuracy, size and ORT latency (int8, or the last stage when there is no int8), every
stage, and per-class accuracy when a report has it. A value missing or not a number is None.
``devices``: what the devices measured after installing it (compiler.fleet.feedback).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.contract import ContractError, read_package

from ..errors import InputError
from ..fleet.feedback import read_devices

# key in a package's summary: (stage field, what it is)
FIGURES = {
    "accuracy": "accuracy",
    "top1_agreement": "top1_agreement",
    "size_bytes": "file_bytes",
    "p50_ms": "ort_p50_ms_1t",
    "p99_ms": "ort_p99_ms_1t",
    "p50_ms_all": "ort_p50_ms_all",
    "params": "params",
    "macs": "macs",
}


STAGE_ORDER = ("fp32", "pruned", "int8")


class UnknownPackage(InputError):
    """No package of this id in the packages folder (HTTP 404)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _served(stages: Mapping[str, Any]) -> Mapping[str, Any]:
    if "int8" in stages:
        return _mapping(stages["int8"])
    return _mapping(list(stages.values())[-1]) if stages else {}


def summary(root: Path) -> dict[str, Any]:
    """One package's line in ``GET /api/packages``; InputError when it is not a package."""
    try:
        package = read_package(root)
    except ContractError as exc:
        raise InputError(str(exc)) from exc
    manifest = package.manifest
    metrics = _mapping(manifest.metrics)
    stages = _mapping(metrics.get("stages"))
    served = _served(stages)
    budget = _mapping(metrics.get("budget"))
    return {
        "id": f"{manifest.name}-{manifest.version}",
        "name": manifest.name,
        "version": manifest.version,
        "created_at": manifest.created_at,
        "folder": root.name,
        "model_bytes": manifest.model.size,
        **{key: _number(served.get(field)) for key, field in FIGURES.items()},
        "accuracy_drop": _number(budget.get("accuracy_drop")),
        "stages": {
            name: {key: _number(_mapping(stages[name]).get(f)) for key, f in FIGURES.items()}
            for name in _in_order(stages)
        },
        "per_class": _per_class(served, manifest.postprocess),
        # each device's own probe figures, fed back by serve's feedback job: {id: {backend, ...}}
        "devices": read_devices(root),
    }


def _in_order(stages: Mapping[str, Any]) -> list[str]:
    """Pipeline order (the signed manifest's JSON has its keys sorted)."""
    return [s for s in STAGE_ORDER if s in stages] + sorted(
        s for s in stages if s not in STAGE_ORDER
    )


def _per_class(served: Mapping[str, Any], postprocess: object) -> dict[str, float | None] | None:
    """The served stage's per-class accuracy (``per_class_accuracy``: {class index: x}), keyed
    by the manifest's label for that index where it has one; None for reports before it."""
    found = served.get("per_class_accuracy")
    if not isinstance(found, Mapping):
        return None
    labels = list(getattr(postprocess, "labels", None) or [])

    def name(index: str) -> str:
        return str(labels[int(index)]) if index.isdigit() and int(index) < len(labels) else index

    return {name(str(index)): _number(value) for index, value in found.items()}


def list_packages(folder: Path) -> list[dict[str, Any]]:
    """Every package under ``folder``, by name then version; folders that are not packages are
    skipped (the folder may hold other things), the first of two with one id kept."""
    found: dict[str, dict[str, Any]] = {}
    try:
        roots = sorted(p.parent for p in folder.glob("*/manifest.json"))
    except OSError as exc:
        raise InputError(f"--packages {folder}: cannot read it ({exc.strerror})") from exc
    for root in roots:
        try:
            entry = summary(root)
        except InputError:
            continue
        found.setdefault(entry["id"], entry)
    return sorted(found.values(), key=lambda e: (e["name"], e["version"]))


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _side_by_side(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    keys = [*a, *(k for k in b if k not in a)]
    return {k: {"a": a.get(k), "b": b.get(k), "delta": _delta(a.get(k), b.get(k))} for k in keys}


def diff(folder: Path, a: str, b: str) -> dict[str, Any]:
    """Package ``b`` against ``a``: each figure of the served stage, each stage's and per-class
    accuracy, as ``{"a", "b", "delta"}`` (delta = b - a; None when either is missing)."""
    packages = {p["id"]: p for p in list_packages(folder)}
    for ident in (a, b):
        if ident not in packages:
            raise UnknownPackage(f"no package {ident!r} in {folder}")
    pa, pb = packages[a], packages[b]
    stages = [*pa["stages"], *(s for s in pb["stages"] if s not in pa["stages"])]
    return {
        "a": {k: pa[k] for k in ("id", "name", "version", "created_at")},
        "b": {k: pb[k] for k in ("id", "name", "version", "created_at")},
        "figures": _side_by_side(
            {k: pa[k] for k in (*FIGURES, "model_bytes", "accuracy_drop")},
            {k: pb[k] for k in (*FIGURES, "model_bytes", "accuracy_drop")},
        ),
        "stages": {
            s: _side_by_side(pa["stages"].get(s, {}), pb["stages"].get(s, {})) for s in stages
        },
        "per_class": (
            _side_by_side(pa["per_class"] or {}, pb["per_class"] or {})
            if pa["per_class"] or pb["per_class"]
            else None
        ),
    }
