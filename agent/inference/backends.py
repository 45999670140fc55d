"""The runtimes that can serve a model on this board, each opening an ONNX file the same way.

Every backend gives a ``Runner``: the part of ONNX Runtime's session interface the agent uses
(``get_inputs()``, ``get_outputs()``, ``run(None, feeds)``), so the feeder, the golden check and
the probe's checks run unchanged on any of them. Which backend serves a package is chosen on the
device by the probe (``agent.delivery.probe``): each installed one is loaded, checked against
the golden outputs and timed, and the fastest that matches wins (``[runtime] backend = "auto"``).

Runners bind their outputs once: ``run`` returns arrays that the next ``run`` overwrites, so a
caller keeping an output past the next run copies it (``Feeder.carry`` and the events' smoothing
do). That, and binding inputs in place, is what cuts the fixed cost of a call.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.config import RuntimeConfig
from agent.inference.onnxrt import ort


class Runner(Protocol):
    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...
    def run(self, names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization]
    return options


def choose_providers(wanted: tuple[str, ...] | list[str]) -> list[str]:
    """The configured execution providers this ONNX Runtime build has, in order; CPU if none."""
    available = set(ort.get_available_providers())
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


class OrtRunner:
    """An ONNX Runtime session run through an I/O binding. The first run with a set of input
    shapes runs plainly and sizes the outputs; later runs with the same shapes (every frame of
    a stream) write into those outputs, bound once, with the inputs bound where they lie."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self._outputs = session.get_outputs()
        self._binding = session.io_binding()
        self._shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # what the binding fits
        self._buffers: list[np.ndarray] = []

    def get_inputs(self) -> list[Any]:
        return list(self.session.get_inputs())

    def get_outputs(self) -> list[Any]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        shapes = tuple((name, array.shape) for name, array in feeds.items())
        if shapes != self._shapes:
            outputs = list(self.session.run(None, feeds))
            self._bind(shapes, outputs)
            return outputs
        for name, array in feeds.items():
            self._binding.bind_cpu_input(name, np.ascontiguousarray(array))
        self.session.run_with_iobinding(self._binding)
        return self._buffers

    def _bind(self, shapes: tuple[tuple[str, tuple[int, ...]], ...], outputs: list[Any]) -> None:
        """Outputs shaped like this run's, bound for the next runs with these input shapes."""
        self._binding.clear_binding_outputs()
        if not all(isinstance(o, np.ndarray) and o.dtype.kind in "biuf" for o in outputs):
            self._shapes = ()  # a sequence or map output: always run plainly
            return
        self._buffers = [np.empty_like(np.asarray(o)) for o in outputs]
        for out, buffer in zip(self._outputs, self._buffers, strict=True):
            self._binding.bind_output(
                out.name, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data
            )
        self._shapes = shapes


def _ort(providers: list[Any]) -> Callable[[Path, RuntimeConfig], Runner]:
    def open_(path: Path, config: RuntimeConfig) -> Runner:
        wanted = providers or choose_providers(config.providers)
        return OrtRunner(ort.InferenceSession(str(path), session_options(config), providers=wanted))

    return open_


@dataclass(frozen=True)
class Port:
    """An input or output as ORT describes it: name, type string, shape (None: dynamic)."""

    name: str
    type: str
    shape: list[int | None]


_OV_TYPES = {"f32": "tensor(float)", "u8": "tensor(uint8)", "i8": "tensor(int8)",
             "i64": "tensor(int64)", "i32": "tensor(int32)", "f16": "tensor(float16)",
             "boolean": "tensor(bool)"}  # fmt: skip


def import_openvino() -> Any:
    """OpenVINO (the optional extra `openvino`) without its telemetry. ``import openvino`` starts
    Google Analytics telemetry (``openvino_telemetry``): it writes a client id under ``~/intel``,
    which the unit's ``ProtectHome=`` forbids, and sends an import event where consent was given.
    With that package marked absent OpenVINO falls back to its own stub, which sends nothing."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


class OpenVinoRunner:
    """OpenVINO's runtime on the ONNX file itself (its CPU plugin runs QDQ int8 natively), full
    float precision so golden outputs hold, one stream for latency."""

    def __init__(self, path: Path, config: RuntimeConfig):
        ov = import_openvino()
        self._ov = ov
        properties: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if config.intra_op_threads:
            properties["INFERENCE_NUM_THREADS"] = config.intra_op_threads
        core = ov.Core()
        model = core.read_model(str(path))
        # the ONNX names, read before compiling merges them with those of the tensors around them
        self._inputs = [_port(p.output(0), p.get_friendly_name()) for p in model.get_parameters()]
        self._outputs = [
            _port(r.input_value(0), r.get_friendly_name().removesuffix("/sink_port_0"))
            for r in model.get_results()
        ]
        self._index = {port.name: i for i, port in enumerate(self._inputs)}
        self._request = core.compile_model(model, "CPU", properties).create_infer_request()

    def get_inputs(self) -> list[Any]:
        return list(self._inputs)

    def get_outputs(self) -> list[Any]:
        return list(self._outputs)

    def run(self, names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, array in feeds.items():
            tensor = self._ov.Tensor(np.ascontiguousarray(array), shared_memory=True)
            self._request.set_input_tensor(self._index[name], tensor)
        self._request.infer()
        return [self._request.get_output_tensor(i).data for i in range(len(self._outputs))]


def _port(port: Any, name: str) -> Port:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    kind = _OV_TYPES.get(port.get_element_type().get_type_name(), "tensor(unknown)")
    return Port(name, kind, shape)


@dataclass(frozen=True)
class Backend:
    name: str
    needs: str  # what must be installed, for the reason a backend is absent
    present: Callable[[], bool]
    open: Callable[[Path, RuntimeConfig], Runner]


def _provider(name: str) -> Callable[[], bool]:
    return lambda: name in ort.get_available_providers()


DEFAULT = "onnxruntime"
_CPU = "CPUExecutionProvider"
_EPS = {  # the ORT backends on one execution provider, with CPU for the nodes it lacks
    "ort-xnnpack": ("XnnpackExecutionProvider", "an onnxruntime build with XNNPACK"),
    "ort-openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "ort-cuda": ("CUDAExecutionProvider", "onnxruntime-gpu (Jetson: JetPack's build)"),
    "ort-tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu with TensorRT"),
}
BACKENDS: dict[str, Backend] = {
    # ONNX Runtime with [runtime] providers (CPU unless configured otherwise): always there
    DEFAULT: Backend(DEFAULT, "onnxruntime", lambda: True, _ort([])),
    "openvino": Backend(
        "openvino",
        "the openvino package (extra `openvino`)",
        lambda: importlib.util.find_spec("openvino") is not None,
        OpenVinoRunner,
    ),
    **{
        name: Backend(
            name,
            needs,
            _provider(ep),
            # TensorRT falls back to CUDA for what it cannot build, then CPU
            _ort([ep, *(["CUDAExecutionProvider"] if name == "ort-tensorrt" else []), _CPU]),
        )
        for name, (ep, needs) in _EPS.items()
    },
}


def installed() -> list[str]:
    """The backends this board can run, the default first."""
    return [name for name, backend in BACKENDS.items() if backend.present()]


def candidates(config: RuntimeConfig) -> list[str]:
    """The backends the probe tries: every installed one for ``auto``, else the configured one."""
    return installed() if config.backend == "auto" else [config.backend]


def serving_backend(config: RuntimeConfig, chosen: str | None) -> str:
    """The backend a package serves with: the configured one, or (``auto``) the probe's choice
    when it is still installed, else the default."""
    if config.backend != "auto":
        return config.backend
    if chosen in BACKENDS and BACKENDS[chosen].present():
        return chosen
    return DEFAULT


def open_runner(path: Path | str, config: RuntimeConfig, backend: str = DEFAULT) -> Runner:
    """The model opened with ``backend`` (the backend's own errors, untyped)."""
    return BACKENDS[backend].open(Path(path), config)


CHOICE = "backend.json"  # beside an installed package: the probe's choice and every figure


def read_choice(folder: Path) -> dict[str, Any]:
    """What the probe chose for the package in ``folder`` (``backend``, ``backends``); empty for
    a package installed before backends were chosen, or a file that does not parse."""
    try:
        choice = json.loads((folder / CHOICE).read_text())
    except (OSError, ValueError):
        return {}
    return choice if isinstance(choice, dict) else {}
