"""Prometheus' naming and exposition rules, checked on a scraped ``/metrics`` text the way
``promtool check metrics`` lints it (plus the histogram rules Prometheus itself relies on).

``problems(text)`` returns one line per broken rule; an empty list means the text is clean.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SNAKE = re.compile(r"[a-z_:][a-z0-9_:]*")  # promtool: no camelCase
_SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# Name parts that say a unit other than a base one: seconds, bytes, ratios, celsius, ...
NOT_BASE = {
    "ms", "msec", "milliseconds", "us", "microseconds", "ns", "nanoseconds", "minutes",
    "hours", "days", "mb", "mib", "kb", "kib", "gb", "gib", "kilobytes", "megabytes",
    "gigabytes", "percent", "pct", "fahrenheit", "millis",
}  # fmt: skip
# The samples each type may have, as suffixes of the family's name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


@dataclass
class Family:
    name: str
    kind: str | None = None
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def parse(text: str) -> dict[str, Family]:
    """The families of a text exposition (format 0.0.4), samples with the family before them."""
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, what, name, *rest = line.split(" ", 3)
            current = families.setdefault(name, Family(name))
            if what == "HELP":
                current.help = rest[0] if rest else ""
            else:
                current.kind = rest[0] if rest else ""
        elif line and not line.startswith("#"):
            match = _SAMPLE.fullmatch(line)
            if match is None or current is None:
                families.setdefault("?", Family("?")).samples.append((line, {}, math.nan))
                continue
            labels = dict(_LABEL.findall(match["labels"] or ""))
            current.samples.append((match["name"], labels, float(match["value"])))
    return families


def find(families: dict[str, Family], name: str) -> Family | None:
    """The family ``name`` (a counter's without ``_total``), however the client spelt it."""
    return families.get(name) or families.get(f"{name}_total")


def _name_problems(family: Family) -> list[str]:
    name, out = family.name, []
    if not NAME.fullmatch(name):
        out.append(f"{name}: not a valid metric name")
    elif not SNAKE.fullmatch(name):
        out.append(f"{name}: not snake_case")
    if family.help is None or not family.help.strip():
        out.append(f"{name}: no HELP")
    if family.kind is None:
        out.append(f"{name}: no TYPE")
    bad_units = NOT_BASE & set(name.lower().split("_"))
    if bad_units:
        out.append(f"{name}: {sorted(bad_units)} is not a base unit (seconds, bytes, ratio)")
    if family.kind != "counter" and name.endswith("_total"):
        out.append(f"{name}: _total on a {family.kind}")
    for kind in ("counter", "gauge", "histogram", "summary"):
        if name.endswith(f"_{kind}"):
            out.append(f"{name}: the type in the name")
    return out


def _sample_problems(family: Family) -> list[str]:
    out = []
    # prometheus-client names a counter's family with or without _total, by version.
    base = family.name.removesuffix("_total") if family.kind == "counter" else family.name
    allowed = {base + suffix for suffix in SUFFIXES.get(family.kind or "", ("",))}
    if family.kind == "info":
        allowed.add(family.name)
    for sample, _, value in family.samples:
        if sample not in allowed:
            out.append(f"{family.name}: sample {sample} does not fit a {family.kind}")
        if family.kind == "counter" and sample.endswith("_total") and value < 0:
            out.append(f"{sample}: a counter below 0")
    if family.kind == "counter" and not any(s.endswith("_total") for s, _, _ in family.samples):
        out.append(f"{family.name}: a counter without a _total sample")
    return out


def _histogram_problems(family: Family) -> list[str]:
    """Per label set: ``le`` increasing to ``+Inf``, counts not decreasing, ``_count`` equal to
    the ``+Inf`` bucket, a ``_sum``."""
    series: dict[tuple[tuple[str, str], ...], dict[str, list]] = {}
    for sample, labels, value in family.samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        entry = series.setdefault(key, {"buckets": [], "count": [], "sum": []})
        if sample.endswith("_bucket"):
            entry["buckets"].append((labels.get("le"), value))
        elif sample.endswith("_count"):
            entry["count"].append(value)
        elif sample.endswith("_sum"):
            entry["sum"].append(value)
    out = []
    for key, entry in series.items():
        where = f"{family.name}{dict(key)}"
        bounds = [float(le) if le is not None else math.nan for le, _ in entry["buckets"]]
        counts = [count for _, count in entry["buckets"]]
        if not bounds or bounds[-1] != math.inf:
            out.append(f"{where}: the last bucket is not le=+Inf")
        if any(not b < c for b, c in itertools.pairwise(bounds)):
            out.append(f"{where}: le bounds not increasing: {bounds}")
        if any(b > c for b, c in itertools.pairwise(counts)):
            out.append(f"{where}: bucket counts decrease: {counts}")
        if len(entry["count"]) != 1 or (counts and entry["count"][0] != counts[-1]):
            out.append(f"{where}: _count is not the +Inf bucket")
        if len(entry["sum"]) != 1:
            out.append(f"{where}: no _sum")
    return out


def problems(text: str) -> list[str]:
    """Every broken rule in a scraped ``/metrics`` text, one line each."""
    out = []
    for family in parse(text).values():
        if family.name == "?":
            out += [f"unreadable sample line: {line!r}" for line, _, _ in family.samples]
            continue
        out += _name_problems(family) + _sample_problems(family)
        if family.kind == "histogram":
            out += _histogram_problems(family)
    return out


def promtool_problems(text: str) -> list[str] | None:
    """What ``promtool check metrics`` says of the text, or None where promtool is not on the
    PATH (the checks above stand in for it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    run = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    said = (run.stdout + run.stderr).strip()
    return [line for line in said.splitlines() if line.strip()] if run.returncode else []
