"""A package's golden inputs and outputs (``golden.npz``): plain numeric arrays, or refused.

The file comes from the package like the model, so it is read as data only: an npz archive (a
zip, checked before numpy sees it), ``allow_pickle=False`` (a pickled object in it would run code
on load), arrays ``inputs`` and ``outputs`` of numbers. Anything else is a GoldenError naming
what is wrong, never an exception from numpy's depths.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from agent.contract import clip
from agent.errors import ModelLoadError

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a model takes and returns


class GoldenError(ModelLoadError):
    """The golden file is not an npz of plain numeric arrays ``inputs`` and ``outputs``."""


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
