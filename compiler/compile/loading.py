"""Load the model ``edgewise compile`` starts from: eager PyTorch, TorchScript, or ONNX."""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from ..errors import InputError, ModelInputError

ModelKind = Literal["eager", "torchscript", "onnx"]


@dataclass(frozen=True)
class SourceModel:
    kind: ModelKind
    module: nn.Module | None = None  # eager or TorchScript
    onnx_path: Path | None = None

    @property
    def prunable(self) -> bool:
        """Torch-Pruning needs an eager module to trace its dependency graph."""
        return self.kind == "eager"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())  # torch.save has no code/


def _from_factory(source: str, weights: Path | None) -> nn.Module:
    module_name, _, attr = source.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        # the command names a module that is not there: exit 2, like a missing file
        raise InputError(f"{source}: cannot import factory: {exc}") from exc
    model = factory()
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as exc:
            raise ModelInputError(f"{weights}: not a state_dict for {source}: {exc}") from exc
    return model


def load_model(source: str, weights: Path | None = None) -> SourceModel:
    """``source``: an ``.onnx`` file, a TorchScript file, a pickled ``nn.Module``
    (``torch.save(model)``), or ``package.module:factory`` (with ``weights``, a state_dict)."""
    path = Path(source)
    if not path.exists():
        if ":" in source:
            model = _from_factory(source, weights)
            if not isinstance(model, nn.Module):
                raise ModelInputError(
                    f"{source}: returned a {type(model).__name__}, not an nn.Module"
                )
            return SourceModel("eager", model.eval())
        raise InputError(f"{source}: no such file (nor a package.module:factory)")
    if path.suffix == ".onnx" or _looks_like_onnx(path):
        try:
            onnx.checker.check_model(str(path))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:
            raise ModelInputError(f"{source}: not a valid ONNX model: {exc}") from exc
        return SourceModel("onnx", onnx_path=path)
    if _is_torchscript(path):
        try:
            return SourceModel("torchscript", torch.jit.load(str(path), map_location="cpu").eval())
        except RuntimeError as exc:
            raise ModelInputError(f"{source}: unreadable TorchScript: {exc}") from exc
    try:
        # A pickled module runs code on load: only load files you produced yourself.
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling raises anything the pickle's classes raise
        raise ModelInputError(
            f"{source}: unknown model format (not ONNX, TorchScript or a pickled nn.Module)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelInputError(f"{source}: holds a {type(model).__name__}, not an nn.Module")
    return SourceModel("eager", model.eval())


def _looks_like_onnx(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises DecodeError or worse on non-ONNX bytes
        return False
    return len(model.graph.node) > 0
