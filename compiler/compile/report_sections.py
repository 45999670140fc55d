"""The compile report's sections that say how far its figures can be trusted, as rows of
strings for the terminal table and the HTML page: per-class accuracy, the confusion matrices,
the comparison with the previous version, the package itself and the devices' own figures.

``package`` and ``devices`` are not in the signed report: the page adds them from the package
folder (report_package) and from what devices reported after installing it (compiler.fleet.
feedback). Every value may be missing or mistyped; it then shows as ``-``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .report_rows import MISSING, _ms, _percent, _si, mapping, number, plain, stage_items
from .report_stats import overlap, wilson

PER_CLASS_STAGES = ("fp32", "int8")
DEVICE_HEADERS = ("device", "backend", "p50", "p99", "reported")
PREVIOUS_HEADERS = ("figure", "previous", "this", "change")


def labels(report: Mapping[str, Any]) -> list[str]:
    found = report.get("labels")
    return [str(label) for label in found] if isinstance(found, list) else []


def _label(report: Mapping[str, Any], index: str) -> str:
    names = labels(report)
    if not index.isdigit() or int(index) >= len(names) or names[int(index)] == index:
        return index  # digits' labels are their indexes: "3", not "3 3"
    return f"{index} {names[int(index)]}"


def _confusion(stage: Mapping[str, Any]) -> list[list[int]] | None:
    found = stage.get("confusion")
    if not isinstance(found, list) or not all(isinstance(row, list) for row in found):
        return None
    return [[int(v) if number(v) is not None else 0 for v in row] for row in found]


def per_class_headers(report: Mapping[str, Any]) -> list[str]:
    shown = [name for name, _ in stage_items(report) if name in PER_CLASS_STAGES]
    return ["class", "n", *shown, "change"]


def per_class_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per class: its held-out count and each of fp32's and int8's accuracy on it."""
    stages = [(n, s) for n, s in stage_items(report) if n in PER_CLASS_STAGES]
    found = [mapping(s.get("per_class_accuracy")) for _, s in stages]
    if not any(found):
        return []
    classes = sorted(
        {c for f in found for c in f},
        key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c),
    )
    rows = []
    for c in classes:
        counts = [_class_count(s, c) for _, s in stages]
        values = [number(f.get(c)) for f in found]
        change = (
            f"{(values[-1] - values[0]) * 100:+.2f} pt"
            if len(values) > 1 and values[0] is not None and values[-1] is not None
            else MISSING
        )
        n = next((str(count) for count in counts if count is not None), MISSING)
        rows.append([_label(report, c), n, *(_percent(v) for v in values), change])
    return rows


def _class_count(stage: Mapping[str, Any], index: str) -> int | None:
    matrix = _confusion(stage)
    if matrix is None or not index.isdigit() or int(index) >= len(matrix):
        return None
    return sum(matrix[int(index)])


def confusion_tables(report: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(stage, headers, rows) per stage with a confusion matrix: a row per true class, a
    column per predicted class."""
    tables = []
    for name, stage in stage_items(report):
        matrix = _confusion(stage)
        if name not in PER_CLASS_STAGES or not matrix:
            continue
        headers = ["true \\ predicted", *(str(i) for i in range(len(matrix[0])))]
        rows = [[_label(report, str(i)), *(str(v) for v in row)] for i, row in enumerate(matrix)]
        tables.append((name, headers, rows))
    return tables


def package_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The package as written: its id, creation time, model sha256, key id and preprocessing."""
    package = mapping(report.get("package"))
    if not package:
        return []
    preprocess = package.get("preprocess")
    spec = json.dumps(preprocess, sort_keys=True) if isinstance(preprocess, Mapping) else MISSING
    keys = package.get("key_ids")
    return [
        ("package", f"{plain(package.get('name'))}-{plain(package.get('version'))}"),
        ("created", plain(package.get("created_at"))),
        ("model sha256", plain(package.get("sha256"))),
        ("model size", _si(package.get("model_bytes"), "B")),
        (
            "signed by key",
            ", ".join(map(str, keys)) if isinstance(keys, list) and keys else MISSING,
        ),
        ("preprocessing", spec),
    ]


def device_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Each device's own probe figures for this package (the backend that serves it there)."""
    devices = mapping(report.get("devices"))
    return [
        [
            str(device),
            plain(mapping(figures).get("backend")),
            _ms(mapping(figures).get("p50_ms")),
            _ms(mapping(figures).get("p99_ms")),
            plain(mapping(figures).get("at")),
        ]
        for device, figures in sorted(devices.items())
    ]


def _served(stages: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if "int8" in stages:
        return "int8", mapping(stages["int8"])
    name = list(stages)[-1] if stages else MISSING
    return name, mapping(stages.get(name))


def previous_title(report: Mapping[str, Any]) -> str:
    previous = mapping(report.get("previous"))
    if not previous:
        return ""
    return (
        f"against {plain(previous.get('name'))} {plain(previous.get('version'))} "
        f"(created {plain(previous.get('created_at'))})"
    )


def previous_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The served stage against the previous version's: accuracy with both intervals (and
    whether they overlap: a change inside both is noise), size and latency."""
    previous = mapping(report.get("previous"))
    if not previous:
        return []
    _, old = _served(mapping(previous.get("stages")))
    _, new = _served(mapping(report.get("stages")))
    rows = [_accuracy_change(old, new)]
    for key, label, show in (
        ("file_bytes", "size", lambda v: _si(v, "B")),
        ("ort_p50_ms_1t", "p50 1 thread", _ms),
        ("ort_p99_ms_1t", "p99 1 thread", _ms),
        ("ort_p50_ms_all", "p50 all threads", _ms),
    ):
        a, b = number(old.get(key)), number(new.get(key))
        change = MISSING if a is None or b is None or a == 0 else f"{(b - a) / a * 100:+.1f}%"
        rows.append([label, show(a), show(b), change])
    return rows


def _accuracy_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = number(old.get("accuracy")), number(new.get("accuracy"))
    na, nb = number(old.get("samples")), number(new.get("samples"))
    if a is None or b is None:
        return ["accuracy", _percent(a), _percent(b), MISSING]
    change = f"{(b - a) * 100:+.2f} pt"
    if na and nb:
        same = overlap(wilson(a, int(na)), wilson(b, int(nb)))
        change += " (within the 95% intervals)" if same else " (outside the 95% intervals)"
    cells = [f"{_percent(v)} (n={int(n) if n else MISSING})" for v, n in ((a, na), (b, nb))]
    return ["accuracy", *cells, change]
