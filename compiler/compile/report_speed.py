"""A compile report's MAC rate sections as rows of strings (shared by the terminal table and the
HTML page): per layer (``layer_speed``) and, with ``--round-to auto``, the int8 kernels' rate per
output width (``kernels``). Missing or mistyped values show as ``-``, as in ``report_rows``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .report_rows import MISSING, _si, join_wrapped, layer_label, mapping, number, plain

SPEED_HEADERS = (
    "layer",
    "op",
    "out ch",
    "MACs",
    "fp32 µs",
    "fp32 GMAC/s",
    "int8 µs",
    "int8 GMAC/s",
)
SPEED_NOTE = "(ONNX Runtime profile, 1 thread, batch 1: each layer's kernel time and MACs / time)"


def _fixed(value: Any, digits: int) -> str:
    v = number(value)
    return MISSING if v is None else f"{v:.{digits}f}"


def speed_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per weighted layer, in graph order."""
    layers = report.get("layer_speed")
    items = [mapping(layer) for layer in layers] if isinstance(layers, list | tuple) else []
    listed = report.get("layers")
    modules = {  # the module class the layer table found for each name
        str(layer.get("name")): layer.get("module")
        for layer in map(mapping, listed if isinstance(listed, list) else [])
    }
    return [
        [
            layer_label({**layer, "module": modules.get(str(layer.get("name")))}),
            plain(layer.get("op")),
            plain(layer.get("out_channels")),
            _si(layer.get("macs")),
            _fixed(layer.get("fp32_us"), 1),
            _fixed(layer.get("fp32_gmacs"), 1),
            _fixed(layer.get("int8_us"), 1),
            _fixed(layer.get("int8_gmacs"), 1),
        ]
        for layer in items
    ]


def kernel_lines(report: Mapping[str, Any]) -> list[str]:
    """The multiple ``--round-to auto`` chose and the rate per width it chose from."""
    kernels = mapping(report.get("kernels"))
    if not kernels:
        return []
    rates = [mapping(r) for r in kernels.get("rates") or [] if isinstance(r, Mapping)]
    cells = [f"{plain(r.get('width'))}: {_fixed(r.get('gmacs'), 0)}" for r in rates]
    head = (
        f"int8 kernels (--round-to auto): channels kept in multiples of "
        f"{plain(kernels.get('multiple'))} ({plain(kernels.get('conv'))}, 1 thread)"
    )
    return [head, *join_wrapped("  GMAC/s per output width: ", cells or [MISSING])]
