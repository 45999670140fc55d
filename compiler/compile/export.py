"""PyTorch → ONNX with the dynamo exporter, verified numerically against torch."""

from __future__ import annotations

import logging
import re
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ..errors import ExportError

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportCheck:
    max_abs_diff: float
    top1_agreement: float


def _unsupported_ops(exc: BaseException) -> list[str]:
    """Operator names an exporter failure mentions (e.g. ``aten.linalg_eig``)."""
    text = "".join(traceback.format_exception(exc))
    found = re.findall(r"OpOverload\(op='([\w.]+)'", text) + re.findall(
        r"torch\.ops\.([\w]+\.[\w]+)", text
    )
    return sorted(set(found))


def export_onnx(model: nn.Module, example: np.ndarray, path: Path, opset: int = OPSET) -> Path:
    """Export with a dynamic batch axis and the weights inside the file.

    Eager modules go through the dynamo exporter (torch's default since 2.9; the TorchScript
    exporter is deprecated). TorchScript modules cannot be traced by torch.export, so they take
    the TorchScript exporter, the one path that reads them.
    """
    model = model.eval()
    # The exporter warns about every torchvision op it cannot register when torchvision is
    # absent, and its graph passes log each step at INFO.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for chatty in ("onnxscript", "onnx_ir"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args = (torch.from_numpy(example),)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if isinstance(model, torch.jit.ScriptModule):
                torch.onnx.export(
                    model,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
                return path
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporters raise many unrelated types
        ops = _unsupported_ops(exc)
        detail = f"unsupported op(s) {', '.join(ops)}" if ops else str(exc).splitlines()[0]
        raise ExportError(f"cannot export to ONNX: {detail}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    return path


def ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch size a model's input is fixed to (other tools often export batch 1), or None."""
    first = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


def ort_outputs(path: Path, x: np.ndarray, threads: int = 0, batch: int = 256) -> np.ndarray:
    """The first output for every row of ``x``, in batches the model's input accepts."""
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    batch = fixed_batch(session) or batch
    return np.concatenate(
        [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


@torch.no_grad()
def verify_export(
    model: nn.Module, path: Path, x: np.ndarray, atol: float = 1e-3, min_agreement: float = 0.99
) -> ExportCheck:
    """Run torch and ORT on the same real inputs; raise if they disagree."""
    expected = model.eval()(torch.from_numpy(x)).numpy()
    got = ort_outputs(path, x)
    check = ExportCheck(
        max_abs_diff=float(np.abs(expected - got).max()),
        top1_agreement=float((expected.argmax(1) == got.argmax(1)).mean()),
    )
    if check.max_abs_diff > atol or check.top1_agreement < min_agreement:
        raise ExportError(f"ONNX export diverges from torch: {check}")
    log.info("export verified: max |diff| %.2e, top-1 agreement %.4f", *vars(check).values())
    return check
