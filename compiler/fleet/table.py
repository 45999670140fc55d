"""The fleet table as people and programs read it: fixed-width text (stale and offline rows in
colour on a terminal, their health marked with ``!`` otherwise), sorted by any column, or JSON.

The rows are ``FleetView.rows()``'s: display figures (fps, ms, %, MB) derived from telemetry's
base units by ``view.device_fields``.
"""

from __future__ import annotations

import json
import math
from typing import Any

# (row key, heading, format for numbers); None format = text, left-aligned
COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("device", "DEVICE", None),
    ("health", "HEALTH", None),
    ("state", "STATE", None),
    ("model", "MODEL", None),
    ("source", "SOURCE", None),
    ("deployment", "DEPLOY", None),
    ("fps", "FPS", "{:.1f}"),
    ("p99_ms", "P99_MS", "{:.1f}"),
    ("error_rate", "ERRORS", "{:.3f}"),
    ("queued", "QUEUED", "{:.0f}"),
    ("dropped", "DROPPED", "{:.0f}"),
    ("cpu_percent", "CPU%", "{:.1f}"),
    ("rss_mb", "RSS_MB", "{:.0f}"),
    ("temp_c", "TEMP_C", "{:.1f}"),
    ("age_s", "AGE_S", "{:.0f}"),
)
SORT_KEYS = tuple(key for key, _, _ in COLUMNS)
_HEALTH = SORT_KEYS.index("health")
_BY_HEADING = {heading.lower(): key for key, heading, _ in COLUMNS}

# Rows that want a look: their colour on a terminal (ANSI), and the mark that stands in for it.
ATTENTION = {"offline": "\033[31m", "stale": "\033[33m"}  # red, yellow
MARK = "!"
_RESET, _BANNER = "\033[0m", "\033[1;31m"  # bold red for the lost-broker line


def sort_key(text: str) -> str:
    """A ``--sort`` argument as a row key: the key or the column's heading, any case."""
    lowered = text.strip().lower()
    return _BY_HEADING.get(lowered, lowered)


def sorted_rows(
    rows: list[dict[str, object]], by: str | None = None, reverse: bool = False
) -> list[dict[str, object]]:
    """``rows`` by the column ``by`` (device id when None), numbers by value, text
    alphabetically; ties by device id; a value not known goes last either way."""
    if by is None or by == "device":
        return sorted(rows, key=lambda row: str(row.get("device")), reverse=reverse)
    by_device = sorted(rows, key=lambda row: str(row.get("device")))
    known = [row for row in by_device if row.get(by) is not None]
    unknown = [row for row in by_device if row.get(by) is None]

    def value(row: dict[str, object]) -> Any:
        cell = row.get(by)
        return (0, cell, "") if isinstance(cell, (int, float)) else (1, 0.0, str(cell))

    # sorted() is stable and reverse keeps equal keys' order: ties stay by device id.
    return sorted(known, key=value, reverse=reverse) + unknown


def _cell(value: object, fmt: str | None) -> str:
    if value is None:
        return "-"
    if fmt is not None and isinstance(value, float):
        return fmt.format(value)
    return str(value)


def render(rows: list[dict[str, object]], banner: str | None, colour: bool = False) -> str:
    """The text table; ``-`` where a value is not known; the banner line above it. ``colour``:
    stale and offline rows (and the banner) in ANSI colour; without it their HEALTH ends in
    ``!`` (``offline!``, ``stale!``), which ``grep`` finds as well as an eye does."""
    cells = [[heading for _, heading, _ in COLUMNS]]
    for row in rows:
        line = [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
        if not colour and str(row.get("health")) in ATTENTION:
            line[_HEALTH] += MARK
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    healths = [None, *(row.get("health") for row in rows)]
    lines = []
    for line, health in zip(cells, healths, strict=True):
        text = "  ".join(
            cell.ljust(width) if fmt is None else cell.rjust(width)
            for cell, width, (_, _, fmt) in zip(line, widths, COLUMNS, strict=True)
        ).rstrip()
        attention = ATTENTION.get(str(health)) if colour else None
        lines.append(f"{attention}{text}{_RESET}" if attention else text)
    if banner is not None:
        lines.insert(0, f"{_BANNER}{banner}{_RESET}" if colour else banner)
    return "\n".join(lines)


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def document(rows: list[dict[str, object]], lost_since: float | None, at: float) -> str:
    """One JSON document (one line): ``{"at", "broker_connected", "broker_lost_since",
    "devices": [row, ...]}``, a row's fields as ``FleetView.rows()`` gives them."""
    return json.dumps(
        {
            "at": at,
            "broker_connected": lost_since is None,
            "broker_lost_since": lost_since,
            "devices": [{k: _finite(v) for k, v in row.items()} for row in rows],
        },
        separators=(",", ":"),
        allow_nan=False,
    )
