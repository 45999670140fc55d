"""What each weighted layer is, for the report: its torch module's class (``Conv2d``), read
from the metadata the torch exporter leaves on every ONNX node. A layer's name is its module
path (``features.3.conv``), which for an ``nn.Sequential``'s children is a bare index (``2``):
the class makes such a name readable. ONNX inputs carry no such metadata: their layers keep the
ONNX node's name alone."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import onnx

from .report import LayerRow

_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


def _module_class(node: onnx.NodeProto) -> str | None:
    """``['...Sequential', 'torch.nn.modules.conv.Conv2d', 'aten.conv2d.default']`` → Conv2d:
    the innermost module (the last entry is the aten op)."""
    for prop in node.metadata_props:
        if prop.key != _HIERARCHY:
            continue
        try:
            classes = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            return None
        if isinstance(classes, list) and len(classes) >= 2 and isinstance(classes[-2], str):
            return classes[-2].rsplit(".", 1)[-1]
    return None


def module_classes(model_path: Path) -> dict[str, str]:
    """{ONNX node name: its torch module's class} for every node that says."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {n.name: cls for n in graph.node if (cls := _module_class(n)) is not None}


def with_modules(rows: list[LayerRow], nodes: dict[str, str], model_path: Path) -> list[LayerRow]:
    """``rows`` with ``module`` set; ``nodes`` maps a row's name to its ONNX node's name."""
    classes = module_classes(model_path)
    return [replace(row, module=classes.get(nodes.get(row.name, row.name))) for row in rows]
