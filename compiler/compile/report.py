"""Render a compile report (the dict ``compile_model`` stores in the manifest's ``metrics``)
as a fixed-width terminal table and as one self-contained HTML page with matplotlib charts.

Only the standard library is imported at module level; matplotlib is imported when the
HTML page is written, and drives the Agg canvas directly (no pyplot, so no global figure
registry to leak into and no switching of an interactive session's backend).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["format_table", "write_html"]

STAGE_ORDER = ("fp32", "pruned", "int8")
MISSING = "-"

_ENVIRONMENT_LABELS = {
    "torch_version": "torch",
    "onnxruntime_version": "onnxruntime",
    "onnx_version": "onnx",
    "opset": "opset",
    "opset_upgraded_to": "upgraded to opset",
    "target": "target",
    "calibration": "calibration",
    "compiler_version": "compiler",
    "machine": "machine",
}
_STAGE_HEADERS = (
    "stage",
    "params",
    "MACs",
    "size",
    "size ratio",
    "accuracy",
    "top-1 agr",
    "p50 1t",
    "p99 1t",
    "p50 all",
    "speed-up",
)
_LAYER_HEADERS = ("layer", "op", "channels", "pruned", "precision", "sensitivity")

_BLUE, _GREY, _ORANGE = "#4c72b0", "#a9b6c8", "#dd8452"


# --- values and units --------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing, not a number, or NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _si(value: Any, unit: str = "", digits: int = 2) -> str:
    """1199882 → ``1.20 M``; 4810559 with unit B → ``4.81 MB``; 812 with unit B → ``812 B``."""
    v = _number(value)
    if v is None:
        return MISSING
    scaled, prefix = v, ""
    for next_prefix in ("k", "M", "G", "T"):
        if abs(round(scaled, digits)) < 1000:
            break
        scaled, prefix = scaled / 1000, next_prefix
    if not prefix and scaled == int(scaled):
        return f"{int(scaled)} {unit}".rstrip()
    return f"{scaled:.{digits}f} {prefix}{unit}".rstrip()


def _ms(value: Any) -> str:
    v = _number(value)
    return MISSING if v is None else f"{v:.3f} ms"


def _percent(fraction: Any, digits: int = 2) -> str:
    v = _number(fraction)
    return MISSING if v is None else f"{v * 100:.{digits}f}%"


def _ratio(numerator: Any, denominator: Any) -> str:
    """``numerator / denominator`` as ``3.00×``, or ``-`` when either is missing or zero."""
    top, bottom = _number(numerator), _number(denominator)
    if top is None or bottom is None or bottom <= 0:
        return MISSING
    return f"{top / bottom:.2f}×"


def _plain(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


# --- report sections, as rows of strings shared by the text and HTML renderings ----------------


def _stages(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, metrics) pairs in pipeline order (fp32, pruned, int8), then any others."""
    stages = _mapping(report.get("stages"))
    names = [n for n in STAGE_ORDER if n in stages] + [n for n in stages if n not in STAGE_ORDER]
    return [(name, _mapping(stages[name])) for name in names]


def _stage_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per stage; size ratio and speed-up (ORT p50, 1 thread) are relative to fp32."""
    stages = _stages(report)
    base = _mapping(_mapping(report.get("stages")).get("fp32"))
    return [
        [
            name,
            _si(s.get("params")),
            _si(s.get("macs")),
            _si(s.get("file_bytes"), "B"),
            _ratio(s.get("file_bytes"), base.get("file_bytes")),
            _percent(s.get("accuracy")),
            _percent(s.get("top1_agreement")),
            _ms(s.get("ort_p50_ms_1t")),
            _ms(s.get("ort_p99_ms_1t")),
            _ms(s.get("ort_p50_ms_all")),
            _ratio(base.get("ort_p50_ms_1t"), s.get("ort_p50_ms_1t")),
        ]
        for name, s in stages
    ]


def _float_layer_names(report: Mapping[str, Any]) -> set[str]:
    names = report.get("float_layers")
    return {str(n) for n in names} if isinstance(names, list | tuple | set) else set()


def _layers(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    layers = report.get("layers")
    return [_mapping(layer) for layer in layers] if isinstance(layers, list | tuple) else []


def _is_float(layer: Mapping[str, Any], float_names: set[str]) -> bool:
    return str(layer.get("name")) in float_names or layer.get("quantized") is False


def _precision(layer: Mapping[str, Any], float_names: set[str]) -> str:
    if _is_float(layer, float_names):
        return "float"
    return "int8" if layer.get("quantized") is True else MISSING


def _channels(layer: Mapping[str, Any]) -> str:
    before, after = layer.get("channels_before"), layer.get("channels_after")
    if before is None and after is None:
        return MISSING
    return f"{_plain(before)} → {_plain(after)}"


def _sensitivity(value: Any) -> str:
    v = _number(value)
    return MISSING if v is None else f"{v:.3g}"


def _layer_rows(report: Mapping[str, Any]) -> list[list[str]]:
    float_names = _float_layer_names(report)
    return [
        [
            _plain(layer.get("name")),
            _plain(layer.get("op")),
            _channels(layer),
            _percent(layer.get("pruning_ratio"), 1),
            _precision(layer, float_names),
            _sensitivity(layer.get("sensitivity")),
        ]
        for layer in _layers(report)
    ]


def _title(report: Mapping[str, Any]) -> str:
    model = _mapping(report.get("model"))
    name = _plain(model.get("name"))
    version = model.get("version")
    return f"{name} {version}" if version not in (None, "") else name


def _eager_lines(report: Mapping[str, Any]) -> list[str]:
    """torch eager latency, and how much faster each ORT stage is (p50, 1 thread)."""
    eager = _mapping(report.get("torch_eager"))
    p50 = eager.get("p50_ms_1t")
    lines = [f"torch eager (1 thread): p50 {_ms(p50)}, p99 {_ms(eager.get('p99_ms_1t'))}"]
    vs = [
        f"{name} {ratio}"
        for name, s in _stages(report)
        if (ratio := _ratio(p50, s.get("ort_p50_ms_1t"))) != MISSING
    ]
    if vs:
        lines.append(f"ORT speed-up vs torch eager (p50, 1 thread): {', '.join(vs)}")
    return lines


def _onnx_lines(report: Mapping[str, Any]) -> list[str]:
    """How an older-opset ONNX input was upgraded, and the ops ORT could not quantize."""
    lines = []
    if "opset_upgrade" in report:
        up = _mapping(report.get("opset_upgrade"))
        diff = _number(up.get("max_abs_diff"))
        lines.append(
            f"opset upgrade {_plain(up.get('from'))} → {_plain(up.get('to'))}: max |before − "
            f"after| {MISSING if diff is None else f'{diff:.2g}'}, top-1 agreement "
            f"{_percent(up.get('top1_agreement'))}"
        )
    listed = report.get("float_ops")
    entries = [_mapping(o) for o in listed] if isinstance(listed, list) else []
    ops = [f"{_plain(o.get('op'))} ({_plain(o.get('node'))})" for o in entries]
    return lines + (_join_wrapped("left float (ORT cannot quantize): ", ops) if ops else [])


def _export_lines(report: Mapping[str, Any]) -> list[str]:
    lines = _onnx_lines(report)
    for key, label in (("export", "export"), ("export_pruned", "export (pruned)")):
        if key in report:
            check = _mapping(report.get(key))
            diff = _number(check.get("max_abs_diff"))
            lines.append(
                f"{label}: max |torch − onnx| {MISSING if diff is None else f'{diff:.2g}'}, "
                f"top-1 agreement {_percent(check.get('top1_agreement'))}"
            )
    return lines


def _budget(report: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(met, sentence); met is None when the report carries no budget."""
    budget = _mapping(report.get("budget"))
    if not budget:
        return None, "no accuracy budget recorded"
    met = budget.get("met")
    verdict = "met" if met is True else "NOT met" if met is False else "unknown"
    drop, cap = _number(budget.get("accuracy_drop")), _number(budget.get("max_accuracy_drop"))
    drop_text = MISSING if drop is None else f"{drop:.2f} pp"
    cap_text = MISSING if cap is None else f"{cap:.2f} pp"
    sentence = f"{verdict} (fp32 → int8 accuracy drop {drop_text}, allowed {cap_text})"
    return (met if isinstance(met, bool) else None), sentence


def _environment(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    env = _mapping(report.get("environment"))
    known = [(label, _plain(env[key])) for key, label in _ENVIRONMENT_LABELS.items() if key in env]
    extra = [
        (str(key), _plain(value)) for key, value in env.items() if key not in _ENVIRONMENT_LABELS
    ]
    return known + extra


def _join_wrapped(prefix: str, items: Sequence[str], width: int = 100) -> list[str]:
    """``prefix`` + items joined by `` · ``, wrapped between items at ``width`` columns."""
    lines, current = [], prefix
    for i, item in enumerate(items):
        piece = item if i == 0 else f" · {item}"
        if i > 0 and len(current) + len(piece) > width:
            lines.append(current + " ·")
            current, piece = " " * len(prefix) + item, ""
        current += piece
    return [*lines, current]


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


def format_table(report: Mapping[str, Any]) -> str:
    """The report as fixed-width text for a terminal; missing values print as ``-``."""
    lines = [f"Edgewise compile report: {_title(report)}", ""]
    rows = _stage_rows(report)
    if rows:
        lines += _text_table(_STAGE_HEADERS, rows, left=1)
        lines.append(
            "(latency: ORT, batch 1, 1t = one thread, all = every core; size ratio and "
            "speed-up vs fp32)"
        )
    else:
        lines.append("stages: -")
    lines.append("")
    lines += _eager_lines(report)
    lines += _export_lines(report)
    lines.append(f"budget: {_budget(report)[1]}")
    env = [f"{k} {v}" for k, v in _environment(report)]
    lines += _join_wrapped("environment: ", env) if env else [f"environment: {MISSING}"]
    layer_rows = _layer_rows(report)
    lines.append("")
    if layer_rows:
        lines.append("layers:")
        lines += ["  " + row for row in _text_table(_LAYER_HEADERS, layer_rows, left=2)]
    else:
        lines.append("layers: -")
    return "\n".join(lines)


# --- charts ------------------------------------------------------------------------------------


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_axisbelow(True)
        ax.grid(axis="y", color="#e6e6e6")
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        fig.clear()
    return buffer.getvalue()


def _values(items: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    """One value per item, NaN where missing (matplotlib draws nothing for a NaN bar)."""
    return [v * scale if (v := _number(item.get(key))) is not None else math.nan for item in items]


def _labels(values: Sequence[float], fmt: str) -> list[str]:
    return ["" if math.isnan(v) else format(v, fmt) for v in values]


def _latency_chart(report: Mapping[str, Any]) -> Figure | None:
    stages = _stages(report)
    one = _values([s for _, s in stages], "ort_p50_ms_1t")
    every = _values([s for _, s in stages], "ort_p50_ms_all")
    if all(math.isnan(v) for v in one + every):
        return None
    fig, (ax,) = _new_figure(6.4, 3.6)
    x = range(len(stages))
    width = 0.38
    bars = ax.bar([i - width / 2 for i in x], one, width, label="1 thread", color=_BLUE)
    ax.bar_label(bars, _labels(one, ".3f"), padding=2, fontsize=8)
    bars = ax.bar([i + width / 2 for i in x], every, width, label="all threads", color=_GREY)
    ax.bar_label(bars, _labels(every, ".3f"), padding=2, fontsize=8)
    eager = _number(_mapping(report.get("torch_eager")).get("p50_ms_1t"))
    if eager is not None:
        ax.axhline(
            eager,
            color=_ORANGE,
            linestyle="--",
            linewidth=1.2,
            label=f"torch eager, 1 thread ({eager:.3f})",
        )
    ax.set_xticks(list(x), [name for name, _ in stages])
    ax.set_ylabel("p50 latency, ms (batch 1)")
    ax.set_title("ONNX Runtime latency per stage")
    ax.margins(y=0.15)
    fig.legend(frameon=False, fontsize=8, loc="outside lower center", ncols=3)
    return fig


def _size_accuracy_chart(report: Mapping[str, Any]) -> Figure | None:
    stages = _stages(report)
    sizes = _values([s for _, s in stages], "file_bytes", 1e-6)
    accuracy = _values([s for _, s in stages], "accuracy", 100.0)
    if all(math.isnan(v) for v in sizes + accuracy):
        return None
    names = [name for name, _ in stages]
    fig, (left, right) = _new_figure(8.0, 3.4, ncols=2)
    bars = left.bar(names, sizes, color=_BLUE, width=0.55)
    left.bar_label(bars, _labels(sizes, ".2f"), padding=2, fontsize=8)
    left.set_ylabel("MB")
    left.set_title("Model file size")
    left.margins(y=0.15)
    # Dots, not bars: accuracies differ by tenths of a point, and bars on a cut axis mislead.
    right.plot(names, accuracy, marker="o", color=_BLUE, linestyle=":")
    for i, v in enumerate(accuracy):
        if not math.isnan(v):
            right.annotate(
                f"{v:.2f}%",
                (i, v),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
            )
    right.set_ylabel("top-1 accuracy, %")
    right.set_title("Accuracy")
    right.margins(x=0.25, y=0.35)
    return fig


def _layer_axis(ax: Axes, names: Sequence[str], floating: Sequence[bool]) -> None:
    """Layer names on the x axis, float (not quantized) layers in orange."""
    crowded = len(names) > 6
    ax.set_xticks(
        range(len(names)),
        names,
        rotation=45 if crowded else 0,
        ha="right" if crowded else "center",
        fontsize=8 if len(names) > 12 else 9,
    )
    for tick, is_float in zip(ax.get_xticklabels(), floating, strict=True):
        if is_float:
            tick.set_color(_ORANGE)
            tick.set_fontweight("bold")
    ax.set_xlabel("layer (float layers in orange)" if any(floating) else "layer")


def _layer_width(count: int) -> float:
    return max(6.4, min(16.0, 2.0 + 0.4 * count))


def _channels_chart(report: Mapping[str, Any]) -> Figure | None:
    from matplotlib.patches import Patch

    float_names = _float_layer_names(report)
    layers = [
        layer
        for layer in _layers(report)
        if _number(layer.get("channels_before")) is not None
        or _number(layer.get("channels_after")) is not None
    ]
    if not layers:
        return None
    before, after = _values(layers, "channels_before"), _values(layers, "channels_after")
    floating = [_is_float(layer, float_names) for layer in layers]
    fig, (ax,) = _new_figure(_layer_width(len(layers)), 3.6)
    x = range(len(layers))
    width = 0.4
    bars = ax.bar([i - width / 2 for i in x], before, width, color=_GREY)
    ax.bar_label(bars, _labels(before, ".0f"), padding=2, fontsize=7)
    bars = ax.bar(
        [i + width / 2 for i in x], after, width, color=[_ORANGE if f else _BLUE for f in floating]
    )
    ax.bar_label(bars, _labels(after, ".0f"), padding=2, fontsize=7)
    _layer_axis(ax, [_plain(layer.get("name")) for layer in layers], floating)
    ax.set_ylabel("output channels")
    ax.set_title("Channels per layer, before and after pruning")
    ax.margins(y=0.12)
    handles = [Patch(color=_GREY, label="before"), Patch(color=_BLUE, label="after, int8")]
    if any(floating):
        handles.append(Patch(color=_ORANGE, label="after, kept in float"))
    ax.legend(handles=handles, frameon=False, fontsize=8)
    return fig


def _sensitivity_chart(report: Mapping[str, Any]) -> Figure | None:
    from matplotlib.patches import Patch

    float_names = _float_layer_names(report)
    layers = [layer for layer in _layers(report) if _number(layer.get("sensitivity")) is not None]
    if not layers:
        return None
    values = _values(layers, "sensitivity")
    floating = [_is_float(layer, float_names) for layer in layers]
    fig, (ax,) = _new_figure(_layer_width(len(layers)), 3.6)
    ax.bar(range(len(layers)), values, color=[_ORANGE if f else _BLUE for f in floating])
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    _layer_axis(ax, [_plain(layer.get("name")) for layer in layers], floating)
    ax.set_ylabel("relative logit MSE")
    ax.set_title("Per-layer int8 sensitivity (only this layer quantized)")
    ax.legend(
        handles=[Patch(color=_BLUE, label="int8"), Patch(color=_ORANGE, label="kept in float")],
        frameon=False,
        fontsize=8,
    )
    return fig


def _charts(report: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(caption, PNG) for every chart the report has data for."""
    builders = (
        (
            "ORT p50 latency per stage, batch 1, one thread and all threads; dashed: torch eager.",
            _latency_chart,
        ),
        ("Model file size and top-1 accuracy per stage.", _size_accuracy_chart),
        ("Output channels per layer before and after pruning.", _channels_chart),
        (
            "Sensitivity of each layer to int8 quantization; orange layers were kept in float.",
            _sensitivity_chart,
        ),
    )
    charts = []
    for caption, build in builders:
        fig = build(report)
        if fig is not None:
            charts.append((caption, _png(fig)))
    return charts


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #ddd; }
th { background: #f3f5f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
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
    title = _title(report)
    met, budget_text = _budget(report)
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
    stage_rows = _stage_rows(report)
    if stage_rows:
        parts.append(_html_table(_STAGE_HEADERS, stage_rows, left=1))
        parts.append(
            _paragraph(
                "Latency: ONNX Runtime, batch 1; 1t = one thread, all = every "
                "core. Size ratio and speed-up (p50, 1 thread) are relative "
                "to fp32.",
                "note",
            )
        )
    else:
        parts.append(_paragraph("No stages recorded."))
    parts += [_paragraph(line) for line in _eager_lines(report)]
    parts += [_paragraph(line) for line in _export_lines(report)]
    parts.append("<h2>Environment</h2>")
    env = _environment(report)
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
    layer_rows = _layer_rows(report)
    if layer_rows:
        classes = ["float" if row[4] == "float" else "" for row in layer_rows]
        parts.append(_html_table(_LAYER_HEADERS, layer_rows, left=2, row_classes=classes))
    else:
        parts.append(_paragraph("No per-layer data."))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_html(report: Mapping[str, Any], path: Path) -> Path:
    """Write the report as one self-contained HTML page (charts inlined as base64 PNG) and
    return its path. The file is replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, _render_html(report, _charts(report)))
    return path
