"""A compile report's metrics (as a manifest carries them: ``CompileReport.as_metrics()``, or
any JSON read back) as rows of strings, shared by the terminal table and the HTML page.

Every value may be missing or of the wrong type: it then shows as ``-``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .report_stats import wilson

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
STAGE_HEADERS = (
    "stage",
    "params",
    "MACs",
    "size",
    "size ratio",
    "accuracy",
    "95% CI",
    "n",
    "top-1 agr",
    "p50 1t",
    "p99 1t",
    "p50 all",
    "p99 all",
    "speed-up",
)
LAYER_HEADERS = ("layer", "op", "channels", "pruned", "precision", "sensitivity")


# --- values and units --------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing, not a number, or NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _si(value: Any, unit: str = "", digits: int = 2) -> str:
    """1199882 → ``1.20 M``; 4810559 with unit B → ``4.81 MB``; 812 with unit B → ``812 B``."""
    v = number(value)
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
    v = number(value)
    return MISSING if v is None else f"{v:.3f} ms"


def _percent(fraction: Any, digits: int = 2) -> str:
    v = number(fraction)
    return MISSING if v is None else f"{v * 100:.{digits}f}%"


def _ratio(numerator: Any, denominator: Any) -> str:
    """``numerator / denominator`` as ``3.00×``, or ``-`` when either is missing or zero."""
    top, bottom = number(numerator), number(denominator)
    if top is None or bottom is None or bottom <= 0:
        return MISSING
    return f"{top / bottom:.2f}×"


def plain(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


# --- report sections, as rows of strings shared by the text and HTML renderings ----------------


def stage_items(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, metrics) pairs in pipeline order (fp32, pruned, int8), then any others."""
    stages = mapping(report.get("stages"))
    names = [n for n in STAGE_ORDER if n in stages] + [n for n in stages if n not in STAGE_ORDER]
    return [(name, mapping(stages[name])) for name in names]


def samples(stage: Mapping[str, Any]) -> int | None:
    n = number(stage.get("samples"))
    return int(n) if n is not None and n > 0 else None


def interval(stage: Mapping[str, Any]) -> tuple[float, float] | None:
    """The 95% Wilson interval of a stage's accuracy (fractions); None without a sample count."""
    accuracy, n = number(stage.get("accuracy")), samples(stage)
    return None if accuracy is None or n is None else wilson(accuracy, n)


def interval_text(stage: Mapping[str, Any]) -> str:
    bounds = interval(stage)
    return MISSING if bounds is None else f"{bounds[0] * 100:.1f}–{bounds[1] * 100:.1f}%"


def stage_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per stage; size ratio and speed-up (ORT p50, 1 thread) are relative to fp32;
    the accuracy's 95% interval (Wilson) over the n held-out samples it was measured on."""
    stages = stage_items(report)
    base = mapping(mapping(report.get("stages")).get("fp32"))
    return [
        [
            name,
            _si(s.get("params")),
            _si(s.get("macs")),
            _si(s.get("file_bytes"), "B"),
            _ratio(s.get("file_bytes"), base.get("file_bytes")),
            _percent(s.get("accuracy")),
            interval_text(s),
            plain(samples(s)),
            _percent(s.get("top1_agreement")),
            _ms(s.get("ort_p50_ms_1t")),
            _ms(s.get("ort_p99_ms_1t")),
            _ms(s.get("ort_p50_ms_all")),
            _ms(s.get("ort_p99_ms_all")),
            _ratio(base.get("ort_p50_ms_1t"), s.get("ort_p50_ms_1t")),
        ]
        for name, s in stages
    ]


def float_layer_names(report: Mapping[str, Any]) -> set[str]:
    names = report.get("float_layers")
    return {str(n) for n in names} if isinstance(names, list | tuple | set) else set()


def layer_items(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    layers = report.get("layers")
    return [mapping(layer) for layer in layers] if isinstance(layers, list | tuple) else []


def is_float(layer: Mapping[str, Any], float_names: set[str]) -> bool:
    return str(layer.get("name")) in float_names or layer.get("quantized") is False


def _precision(layer: Mapping[str, Any], float_names: set[str]) -> str:
    if is_float(layer, float_names):
        return "float"
    return "int8" if layer.get("quantized") is True else MISSING


def _channels(layer: Mapping[str, Any]) -> str:
    before, after = layer.get("channels_before"), layer.get("channels_after")
    if before is None and after is None:
        return MISSING
    return f"{plain(before)} → {plain(after)}"


def _sensitivity(value: Any) -> str:
    v = number(value)
    return MISSING if v is None else f"{v:.3g}"


def layer_label(layer: Mapping[str, Any]) -> str:
    """The layer's module path, with its module's class where the report has it: a Sequential's
    children are named by index alone (``2``), which says nothing without ``Conv2d``."""
    name, module = plain(layer.get("name")), layer.get("module")
    return f"{name} ({module})" if isinstance(module, str) and module else name


def layer_rows(report: Mapping[str, Any]) -> list[list[str]]:
    float_names = float_layer_names(report)
    return [
        [
            layer_label(layer),
            plain(layer.get("op")),
            _channels(layer),
            _percent(layer.get("pruning_ratio"), 1),
            _precision(layer, float_names),
            _sensitivity(layer.get("sensitivity")),
        ]
        for layer in layer_items(report)
    ]


def title(report: Mapping[str, Any]) -> str:
    model = mapping(report.get("model"))
    name = plain(model.get("name"))
    version = model.get("version")
    return f"{name} {version}" if version not in (None, "") else name


def eager_lines(report: Mapping[str, Any]) -> list[str]:
    """torch eager latency, and how much faster each ORT stage is (p50, 1 thread)."""
    eager = mapping(report.get("torch_eager"))
    p50 = eager.get("p50_ms_1t")
    lines = [f"torch eager (1 thread): p50 {_ms(p50)}, p99 {_ms(eager.get('p99_ms_1t'))}"]
    vs = [
        f"{name} {ratio}"
        for name, s in stage_items(report)
        if (ratio := _ratio(p50, s.get("ort_p50_ms_1t"))) != MISSING
    ]
    if vs:
        lines.append(f"ORT speed-up vs torch eager (p50, 1 thread): {', '.join(vs)}")
    return lines


def _onnx_lines(report: Mapping[str, Any]) -> list[str]:
    """How an older-opset ONNX input was upgraded, and the ops ORT could not quantize."""
    lines = []
    if "opset_upgrade" in report:
        up = mapping(report.get("opset_upgrade"))
        diff = number(up.get("max_abs_diff"))
        lines.append(
            f"opset upgrade {plain(up.get('from'))} → {plain(up.get('to'))}: max |before − "
            f"after| {MISSING if diff is None else f'{diff:.2g}'}, top-1 agreement "
            f"{_percent(up.get('top1_agreement'))}"
        )
    listed = report.get("float_ops")
    entries = [mapping(o) for o in listed] if isinstance(listed, list) else []
    ops = [f"{plain(o.get('op'))} ({plain(o.get('node'))})" for o in entries]
    return lines + (join_wrapped("left float (ORT cannot quantize): ", ops) if ops else [])


def export_lines(report: Mapping[str, Any]) -> list[str]:
    lines = _onnx_lines(report)
    for key, label in (("export", "export"), ("export_pruned", "export (pruned)")):
        if key in report:
            check = mapping(report.get(key))
            diff = number(check.get("max_abs_diff"))
            lines.append(
                f"{label}: max |torch − onnx| {MISSING if diff is None else f'{diff:.2g}'}, "
                f"top-1 agreement {_percent(check.get('top1_agreement'))}"
            )
    return lines


def budget_verdict(report: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(met, sentence); met is None when the report carries no budget."""
    budget = mapping(report.get("budget"))
    if not budget:
        return None, "no accuracy budget recorded"
    met = budget.get("met")
    verdict = "met" if met is True else "NOT met" if met is False else "unknown"
    drop, cap = number(budget.get("accuracy_drop")), number(budget.get("max_accuracy_drop"))
    drop_text = MISSING if drop is None else f"{drop:.2f} pp"
    cap_text = MISSING if cap is None else f"{cap:.2f} pp"
    sentence = f"{verdict} (fp32 → int8 accuracy drop {drop_text}, allowed {cap_text})"
    return (met if isinstance(met, bool) else None), sentence


def environment_items(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    env = mapping(report.get("environment"))
    known = [(label, plain(env[key])) for key, label in _ENVIRONMENT_LABELS.items() if key in env]
    extra = [
        (str(key), plain(value)) for key, value in env.items() if key not in _ENVIRONMENT_LABELS
    ]
    return known + extra


def join_wrapped(prefix: str, items: Sequence[str], width: int = 100) -> list[str]:
    """``prefix`` + items joined by `` · ``, wrapped between items at ``width`` columns."""
    lines, current = [], prefix
    for i, item in enumerate(items):
        piece = item if i == 0 else f" · {item}"
        if i > 0 and len(current) + len(piece) > width:
            lines.append(current + " ·")
            current, piece = " " * len(prefix) + item, ""
        current += piece
    return [*lines, current]


def search_lines(report: Mapping[str, Any]) -> list[str]:
    """``--prune auto``'s trials by ratio and the ratio chosen; nothing without a search."""
    search = mapping(report.get("prune_search"))
    if not search:
        return []
    out = ["prune search (--prune auto): ratio, int8 top-1, drop (pt), p50 1 thread, verdict"]
    trials = [mapping(t) for t in search.get("trials") or []]
    for t in sorted(trials, key=lambda t: number(t.get("ratio")) or 0.0):
        cells = [
            _or_missing(number(t.get("ratio")), "{:.3f}"),
            _or_missing(number(t.get("accuracy")), "{:.4f}"),
            _or_missing(number(t.get("drop_points")), "{:.2f}"),
            _or_missing(number(t.get("p50_ms_1t")), "{:.3f} ms"),
            "pass" if t.get("passed") is True else f"fail: {t.get('reason') or MISSING}",
        ]
        out.append("  " + "  ".join(cells))
    chosen = number(search.get("chosen"))
    out.append(f"  chosen: {'none passed, not pruned' if chosen is None else f'{chosen:.3f}'}")
    return out


def _or_missing(value: float | None, pattern: str) -> str:
    return MISSING if value is None else pattern.format(value)
