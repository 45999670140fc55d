"""Render a compile report (a ``CompileReport``, or the dict it is stored as in the manifest's
``metrics``) as a fixed-width terminal table and as one self-contained HTML page with charts.

Only the standard library is imported at module level; matplotlib is imported when the
HTML page is written (``report_charts``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..files import write_atomic
from . import report_charts
from . import report_rows as sections
from . import report_sections as trust
from . import report_speed as speed
from .report_rows import MISSING

if TYPE_CHECKING:  # not at run time: the report's module imports torch
    from .report import CompileReport

__all__ = ["format_table", "write_html"]


Report: TypeAlias = "CompileReport | Mapping[str, Any]"  # or as a manifest's metrics carry it


def _metrics(report: Report) -> Mapping[str, Any]:
    return report if isinstance(report, Mapping) else report.as_metrics()


# --- terminal table ----------------------------------------------------------------------------


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """Fixed-width columns: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *map(line, rows)]


def format_table(report: Report) -> str:
    """The report as fixed-width text for a terminal; missing values print as ``-``."""
    report = _metrics(report)
    lines = [f"Edgewise compile report: {sections.title(report)}", ""]
    rows = sections.stage_rows(report)
    if rows:
        # two tables, so that a terminal of 110 columns holds each: size and accuracy, latency
        split = sections.STAGE_HEADERS.index("p50 1t")
        lines += _text_table(sections.STAGE_HEADERS[:split], [r[:split] for r in rows], left=1)
        lines.append("(size ratio vs fp32; 95% CI: Wilson, over the n held-out samples)")
        lines.append("")
        latency = [sections.STAGE_HEADERS[0], *sections.STAGE_HEADERS[split:]]
        lines += _text_table(latency, [[r[0], *r[split:]] for r in rows], left=1)
        lines.append(
            "(latency: ORT, batch 1, 1t = one thread, all = every core; speed-up vs fp32, p50 1t)"
        )
    else:
        lines.append("stages: -")
    lines.append("")
    lines += sections.eager_lines(report)
    lines += sections.export_lines(report)
    lines.append(f"budget: {sections.budget_verdict(report)[1]}")
    lines += sections.search_lines(report)
    env = [f"{k} {v}" for k, v in sections.environment_items(report)]
    lines += sections.join_wrapped("environment: ", env) if env else [f"environment: {MISSING}"]
    layer_rows = sections.layer_rows(report)
    lines.append("")
    if layer_rows:
        lines.append("layers:")
        lines += ["  " + row for row in _text_table(sections.LAYER_HEADERS, layer_rows, left=2)]
    else:
        lines.append("layers: -")
    return "\n".join(lines + _speed_text(report) + _trust_text(report))


def _trust_text(report: Mapping[str, Any]) -> list[str]:
    """Previous version, per-class accuracy, confusion, the package and the devices."""
    lines: list[str] = []
    for title, headers, rows, left in _trust_tables(report):
        lines += ["", f"{title}:"] + ["  " + r for r in _text_table(headers, rows, left=left)]
    return lines


_Table: TypeAlias = tuple[str, Sequence[str], Sequence[Sequence[str]], int]


def _trust_tables(report: Mapping[str, Any]) -> list[_Table]:
    """(title, headers, rows, left-aligned columns) of every section the report has data for."""
    tables: list[_Table] = []
    if rows := trust.previous_rows(report):
        title = f"compared with the previous version, {trust.previous_title(report)}"
        tables.append((title, trust.PREVIOUS_HEADERS, rows, 1))
    if rows := trust.per_class_rows(report):
        tables.append(("per-class accuracy", trust.per_class_headers(report), rows, 1))
    for stage, headers, rows in trust.confusion_tables(report):
        tables.append((f"confusion matrix, {stage} (rows: true class)", headers, rows, 1))
    if package := trust.package_rows(report):
        tables.append(("package", ("item", "value"), [list(r) for r in package], 2))
    if rows := trust.device_rows(report):
        tables.append(("on devices (the board's own probe)", trust.DEVICE_HEADERS, rows, 2))
    return tables


def _speed_text(report: Mapping[str, Any]) -> list[str]:
    """Per-layer MAC rate and the kernels' rate per width, when the report has them."""
    lines, rows = [], speed.speed_rows(report)
    if rows:
        lines += ["", f"layer speed {speed.SPEED_NOTE}:"]
        lines += ["  " + row for row in _text_table(speed.SPEED_HEADERS, rows, left=2)]
    kernels = speed.kernel_lines(report)
    return lines + (["", *kernels] if kernels else [])


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #ddd; }
th { background: #f3f5f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.zero { color: #bbb; } td.diag { background: #e3f4e6; font-weight: 600; }
td.off { background: #fde2e1; }
tr.float td { background: #fdf0e6; }
.verdict { display: inline-block; padding: .4rem .8rem; border-radius: .3rem; font-weight: 600; }
.met { background: #e3f4e6; color: #1b5e20; } .missed { background: #fde2e1; color: #b71c1c; }
.unknown { background: #eee; }
.note { color: #666; font-size: .85rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .85rem; }
"""


def _html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: int,
    row_classes: Sequence[str] | None = None,
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cls = row_classes[r] if row_classes else ""
        cells = "".join(
            f"<td>{html.escape(c)}</td>" if i < left else f'<td class="num">{html.escape(c)}</td>'
            for i, c in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _paragraph(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>"


def _render_html(report: Mapping[str, Any], charts: Sequence[tuple[str, bytes]]) -> str:
    title = sections.title(report)
    met, budget_text = sections.budget_verdict(report)
    verdict_class = "met" if met is True else "missed" if met is False else "unknown"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Edgewise report: {html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _paragraph("Edgewise compile report", "note"),
        _paragraph(f"Accuracy budget {budget_text}", f"verdict {verdict_class}"),
        "<h2>Stages</h2>",
    ]
    stage_rows = sections.stage_rows(report)
    if stage_rows:
        parts.append(_html_table(sections.STAGE_HEADERS, stage_rows, left=1))
        parts.append(
            _paragraph(
                "Latency: ONNX Runtime, batch 1; 1t = one thread, all = every "
                "core. Size ratio and speed-up (p50, 1 thread) are relative "
                "to fp32. 95% CI: the Wilson interval of the accuracy over the n "
                "held-out samples it was measured on.",
                "note",
            )
        )
    else:
        parts.append(_paragraph("No stages recorded."))
    parts += [_paragraph(line) for line in sections.eager_lines(report)]
    parts += [_paragraph(line) for line in sections.export_lines(report)]
    parts.append("<h2>Environment</h2>")
    env = sections.environment_items(report)
    parts.append(_html_table(("item", "value"), env, left=2) if env else _paragraph(MISSING))
    if charts:
        parts.append("<h2>Charts</h2>")
    for caption, png in charts:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Layers</h2>")
    layer_rows = sections.layer_rows(report)
    if layer_rows:
        classes = ["float" if row[4] == "float" else "" for row in layer_rows]
        parts.append(_html_table(sections.LAYER_HEADERS, layer_rows, left=2, row_classes=classes))
    else:
        parts.append(_paragraph("No per-layer data."))
    parts += _speed_html(report)
    parts += _trust_html(report)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _speed_html(report: Mapping[str, Any]) -> list[str]:
    rows, kernels = speed.speed_rows(report), speed.kernel_lines(report)
    if not rows and not kernels:
        return []
    parts = ["<h2>Layer speed</h2>"]
    if rows:
        parts.append(_html_table(speed.SPEED_HEADERS, rows, left=2))
        parts.append(_paragraph(speed.SPEED_NOTE.strip("()"), "note"))
    return parts + ([_paragraph(" ".join(line.strip() for line in kernels))] if kernels else [])


def _trust_html(report: Mapping[str, Any]) -> list[str]:
    parts = []
    for title, headers, rows, left in _trust_tables(report):
        heading = "On devices" if title.startswith("on devices") else title[0].upper() + title[1:]
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if title.startswith("confusion"):
            parts.append(_confusion_html(headers, rows))
        else:
            parts.append(_html_table(headers, rows, left=left))
    if trust.device_rows(report):
        parts.append(
            _paragraph(
                "Measured by each device's agent on its own board when it installed this "
                "package: the backend it chose and that backend's p50/p99, batch 1.",
                "note",
            )
        )
    return parts


def _confusion_html(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A confusion matrix: the diagonal green, misses red, zeros grey."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cells = [f"<th>{html.escape(row[0])}</th>"]
        for c, value in enumerate(row[1:]):
            cls = "diag" if c == r else "zero" if value == "0" else "off"
            cells.append(f'<td class="num {cls}">{html.escape(value)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_html(report: Report, path: Path) -> Path:
    """Write the report as one self-contained HTML page (charts inlined as base64 PNG) and
    return its path. The file is replaced atomically."""
    report = _metrics(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _render_html(report, report_charts.charts(report)))
    return path
