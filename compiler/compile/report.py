"""The compile report: what ``compile_model`` measured, typed. It travels in the package's
manifest as ``metrics`` (``as_metrics()``), and ``report_render`` shows it to a person."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .export import ExportCheck
from .kernels import KernelProfile
from .layer_speed import LayerSpeed
from .measure import StageMetrics
from .prune_search import Search
from .quantize import FloatOp


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    output: str  # the output the package serves


@dataclass(frozen=True)
class OpsetUpgrade:
    """An older-opset ONNX input was upgraded; ``check`` compares it before and after."""

    from_opset: int
    to_opset: int | None
    check: ExportCheck

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.from_opset, "to": self.to_opset, **asdict(self.check)}


@dataclass(frozen=True)
class EagerLatency:
    """The torch model itself, one thread, batch 1."""

    p50_ms_1t: float
    p99_ms_1t: float


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float  # top-1 points allowed below fp32
    accuracy_drop: float  # top-1 points fp32 → int8
    met: bool = True  # a missed budget writes no package, so a report says met


@dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    channels_before: int | None
    channels_after: int | None
    pruning_ratio: float | None
    quantized: bool
    sensitivity: float | None  # relative logit MSE with only this layer quantized
    module: str | None = None  # the torch module's class (Conv2d); None for an ONNX input


@dataclass(frozen=True)
class Environment:
    torch_version: str
    onnxruntime_version: str
    onnx_version: str
    opset: int  # the input model's own (a torch model's is the export's)
    target: str
    calibration: str
    compiler_version: str
    machine: str
    opset_upgraded_to: int | None = None

    def as_dict(self) -> dict[str, Any]:
        upgraded = {"opset_upgraded_to": self.opset_upgraded_to}
        return {
            "torch_version": self.torch_version,
            "onnxruntime_version": self.onnxruntime_version,
            "onnx_version": self.onnx_version,
            "opset": self.opset,
            **(upgraded if self.opset_upgraded_to is not None else {}),
            "target": self.target,
            "calibration": self.calibration,
            "compiler_version": self.compiler_version,
            "machine": self.machine,
        }


@dataclass(frozen=True)
class CompileReport:
    model: ModelInfo
    stages: dict[str, StageMetrics]  # fp32, pruned (when pruned), int8: in that order
    budget: Budget
    layers: list[LayerRow]
    float_layers: list[str]  # layers kept in float to meet the budget
    float_ops: list[FloatOp]  # ops ORT cannot quantize
    environment: Environment
    opset_upgrade: OpsetUpgrade | None = None  # an ONNX input's
    export: ExportCheck | None = None  # a torch input's export, checked against it
    torch_eager: EagerLatency | None = None
    export_pruned: ExportCheck | None = None
    prune_search: Search | None = None  # --prune auto's trials and the ratio chosen
    layer_speed: list[LayerSpeed] | None = None  # MACs, µs and GMAC/s per weighted layer
    kernels: KernelProfile | None = None  # --round-to auto: the rate per width measured here
    labels: list[str] | None = None  # class index → label, for per-class figures
    previous: dict[str, Any] | None = None  # the earlier version's figures (report_previous)

    def as_metrics(self) -> dict[str, Any]:
        """The report as the manifest's ``metrics`` carry it (plain JSON values)."""
        optional = {
            "opset_upgrade": self.opset_upgrade.as_dict() if self.opset_upgrade else None,
            "export": asdict(self.export) if self.export else None,
            "torch_eager": asdict(self.torch_eager) if self.torch_eager else None,
            "export_pruned": asdict(self.export_pruned) if self.export_pruned else None,
            "prune_search": self.prune_search.as_dict() if self.prune_search else None,
            "kernels": self.kernels.as_dict() if self.kernels else None,
            "layer_speed": [s.as_dict() for s in self.layer_speed] if self.layer_speed else None,
            "labels": list(self.labels) if self.labels else None,
            "previous": self.previous,
        }
        return {
            "model": asdict(self.model),
            **{key: value for key, value in optional.items() if value is not None},
            "stages": {name: metrics.to_dict() for name, metrics in self.stages.items()},
            "budget": asdict(self.budget),
            "layers": [asdict(layer) for layer in self.layers],
            "float_layers": list(self.float_layers),
            "float_ops": [asdict(op) for op in self.float_ops],
            "environment": self.environment.as_dict(),
        }

    def __getitem__(self, key: str) -> Any:
        """One section as the manifest carries it: ``report["stages"]["int8"]["accuracy"]``."""
        return self.as_metrics()[key]
