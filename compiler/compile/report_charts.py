"""The compile report's charts, as PNG bytes: matplotlib is imported only when they are drawn,
and drives the Agg canvas directly (no pyplot, so no global figure registry to leak into and no
switching of an interactive session's backend)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import report_rows as sections
from .report_stats import accuracy_floor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_BLUE, _GREY, _ORANGE = "#4c72b0", "#a9b6c8", "#dd8452"


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
    return [
        v * scale if (v := sections.number(item.get(key))) is not None else math.nan
        for item in items
    ]


def _labels(values: Sequence[float], fmt: str) -> list[str]:
    return ["" if math.isnan(v) else format(v, fmt) for v in values]


def _latency_panel(
    ax: Axes, report: Mapping[str, Any], stages: list[tuple[str, Mapping[str, Any]]], q: str
) -> None:
    """One percentile (``p50`` or ``p99``): one thread and all threads per stage, and torch
    eager's same percentile on one thread as a dashed line."""
    x = range(len(stages))
    width = 0.38
    for offset, key, label, colour in (
        (-width / 2, f"ort_{q}_ms_1t", "1 thread", _BLUE),
        (width / 2, f"ort_{q}_ms_all", "all threads", _GREY),
    ):
        values = _values([s for _, s in stages], key)
        bars = ax.bar([i + offset for i in x], values, width, label=label, color=colour)
        ax.bar_label(bars, _labels(values, ".3f"), padding=2, fontsize=8)
    eager = sections.number(sections.mapping(report.get("torch_eager")).get(f"{q}_ms_1t"))
    if eager is not None:
        ax.axhline(
            eager, color=_ORANGE, linestyle="--", linewidth=1.2, label="torch eager, 1 thread"
        )
    ax.set_xticks(list(x), [name for name, _ in stages])
    ax.set_ylabel(f"{q} latency, ms (batch 1)")
    ax.set_title(f"ONNX Runtime {q}")
    ax.margins(y=0.15)


def _latency_chart(report: Mapping[str, Any]) -> Figure | None:
    """p50 and p99 side by side, each on its own axis: on a busy machine p99 can be tens of
    times p50, and one axis for both would flatten the p50 bars to nothing."""
    stages = sections.stage_items(report)
    keys = ("ort_p50_ms_1t", "ort_p50_ms_all", "ort_p99_ms_1t", "ort_p99_ms_all")
    if all(math.isnan(v) for key in keys for v in _values([s for _, s in stages], key)):
        return None
    fig, (left, right) = _new_figure(9.6, 3.6, ncols=2)
    _latency_panel(left, report, stages, "p50")
    _latency_panel(right, report, stages, "p99")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=8, loc="outside lower center", ncols=3)
    return fig


def _size_accuracy_chart(report: Mapping[str, Any]) -> Figure | None:
    stages = sections.stage_items(report)
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
    _accuracy_axis(right, names, [s for _, s in stages])
    return fig


def _accuracy_axis(ax: Axes, names: list[str], stages: Sequence[Mapping[str, Any]]) -> None:
    """Dots with their 95% interval as error bars, on an axis from a floor (report_stats) to
    100%: the interval, not the axis, says how big a difference is."""
    accuracy = _values(stages, "accuracy", 100.0)
    bounds = [sections.interval(s) for s in stages]
    low = [
        v - b[0] * 100 if b and not math.isnan(v) else 0.0
        for v, b in zip(accuracy, bounds, strict=True)
    ]
    high = [
        b[1] * 100 - v if b and not math.isnan(v) else 0.0
        for v, b in zip(accuracy, bounds, strict=True)
    ]
    ax.errorbar(names, accuracy, yerr=[low, high], fmt="o", color=_BLUE, capsize=5, elinewidth=1.2)
    for i, v in enumerate(accuracy):
        if not math.isnan(v):
            ax.annotate(f"{v:.2f}%", (i, v), textcoords="offset points", xytext=(8, 0), fontsize=8)
    lows = [b[0] * 100 for b in bounds if b] or [v for v in accuracy if not math.isnan(v)]
    ax.set_ylim(accuracy_floor(lows), 100.5)
    counts = {sections.samples(s) for s in stages} - {None}
    n = f", n = {counts.pop()}" if len(counts) == 1 else ""
    ax.set_ylabel("top-1 accuracy, %")
    ax.set_title(f"Accuracy, 95% interval{n}")
    ax.margins(x=0.25)


def _layer_axis(ax: Axes, layers: Sequence[Mapping[str, Any]], floating: Sequence[bool]) -> None:
    """Layer names on the x axis, float (not quantized) layers in orange."""
    names = [sections.layer_label(layer) for layer in layers]
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


def _layers_with(
    report: Mapping[str, Any], *keys: str
) -> tuple[list[Mapping[str, Any]], list[bool]]:
    """The layers with a number under any of ``keys``, and whether each one stayed float."""
    float_names = sections.float_layer_names(report)
    layers = [
        layer
        for layer in sections.layer_items(report)
        if any(sections.number(layer.get(key)) is not None for key in keys)
    ]
    return layers, [sections.is_float(layer, float_names) for layer in layers]


def _channels_chart(report: Mapping[str, Any]) -> Figure | None:
    from matplotlib.patches import Patch

    layers, floating = _layers_with(report, "channels_before", "channels_after")
    if not layers:
        return None
    before, after = _values(layers, "channels_before"), _values(layers, "channels_after")
    fig, (ax,) = _new_figure(_layer_width(len(layers)), 3.6)
    x = range(len(layers))
    width = 0.4
    bars = ax.bar([i - width / 2 for i in x], before, width, color=_GREY)
    ax.bar_label(bars, _labels(before, ".0f"), padding=2, fontsize=7)
    bars = ax.bar(
        [i + width / 2 for i in x], after, width, color=[_ORANGE if f else _BLUE for f in floating]
    )
    ax.bar_label(bars, _labels(after, ".0f"), padding=2, fontsize=7)
    _layer_axis(ax, layers, floating)
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

    layers, floating = _layers_with(report, "sensitivity")
    if not layers:
        return None
    values = _values(layers, "sensitivity")
    fig, (ax,) = _new_figure(_layer_width(len(layers)), 3.6)
    ax.bar(range(len(layers)), values, color=[_ORANGE if f else _BLUE for f in floating])
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    _layer_axis(ax, layers, floating)
    ax.set_ylabel("relative logit MSE")
    ax.set_title("Per-layer int8 sensitivity (only this layer quantized)")
    ax.legend(
        handles=[Patch(color=_BLUE, label="int8"), Patch(color=_ORANGE, label="kept in float")],
        frameon=False,
        fontsize=8,
    )
    return fig


def charts(report: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(caption, PNG) for every chart the report has data for."""
    builders = (
        (
            "ORT latency per stage, batch 1, p50 and p99, one thread and all threads; "
            "dashed: torch eager on one thread.",
            _latency_chart,
        ),
        (
            "Model file size, and top-1 accuracy per stage with its 95% Wilson interval; the "
            "accuracy axis starts at the lowest lower bound less 2 points, rounded down to 5.",
            _size_accuracy_chart,
        ),
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
