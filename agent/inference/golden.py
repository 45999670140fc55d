"""A package's golden inputs and outputs (``golden.npz``): plain numeric arrays, or refused; and
the one check that a loaded model reproduces them (the probe child and the serving process both
run it).

The file comes from the package like the model, so it is read as data only: an npz archive (a
zip, checked before numpy sees it), ``allow_pickle=False`` (a pickled object in it would run code
on load), arrays ``inputs`` and ``outputs`` of numbers. Anything else is a GoldenError naming
what is wrong, never an exception from numpy's depths.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract import Manifest, clip
from agent.errors import ModelLoadError
from agent.inference.state import FeedError, feeder_for

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a model takes and returns


class GoldenError(ModelLoadError):
    """The golden file is not an npz of plain numeric arrays ``inputs`` and ``outputs``, or the
    model does not reproduce them."""


def load_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, outputs) from a golden file, or GoldenError."""
    if not zipfile.is_zipfile(path):
        raise GoldenError("golden file is not an npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"inputs", "outputs"} - set(data.files)
            if missing:
                raise GoldenError(f"golden file lacks {', '.join(sorted(missing))}")
            inputs, outputs = data["inputs"], data["outputs"]
    except GoldenError:
        raise
    except Exception as exc:  # numpy and zipfile raise many kinds for a malformed archive
        raise GoldenError(f"golden file is not an npz of plain arrays: {clip(exc, 120)}") from None
    for name, array in (("inputs", inputs), ("outputs", outputs)):
        if array.dtype.kind not in NUMERIC_KINDS or array.dtype.hasobject:
            raise GoldenError(f"golden {name} are not plain numbers ({array.dtype.str})")
    return inputs, outputs


def golden_outputs(session: Any, manifest: Manifest, inputs: np.ndarray) -> np.ndarray:
    """The first output for the golden inputs: one batch; or, for a stateful model, each input
    (a batch of one) in turn from the initial state, the outputs stacked. The compiler writes a
    package's golden file with this same function."""
    feeder = feeder_for(session, manifest)
    if not feeder.stateful:
        return np.array(feeder.run(session, inputs)[0])  # runners reuse their outputs
    return np.stack([np.array(feeder.run(session, one)[0]) for one in inputs])


def check_golden(session: Any, manifest: Manifest, golden: Path) -> None:
    """The golden inputs through an ONNX Runtime ``session`` give the golden outputs, within
    ``golden_atol``; GoldenError says how they do not. What ``session.run`` raises passes
    through: the caller names it (a child's out-of-memory is not a wrong answer)."""
    inputs, expected = load_golden(golden)
    dtype = np.dtype(manifest.input.dtype)
    if inputs.dtype != dtype:
        raise GoldenError(f"golden inputs are {inputs.dtype}, the manifest's input is {dtype}")
    try:
        got = golden_outputs(session, manifest, inputs)
    except FeedError as exc:
        raise GoldenError(str(exc)) from None
    if got.shape != expected.shape:
        raise GoldenError(
            f"golden outputs differ from the package's: shape {list(got.shape)} != "
            f"{list(expected.shape)}"
        )
    if not np.allclose(got, expected, atol=manifest.golden_atol, rtol=0):
        diff = float(np.abs(got - expected).max())
        raise GoldenError(
            f"golden outputs differ from the package's: max |diff| {diff} > atol "
            f"{manifest.golden_atol}"
        )
