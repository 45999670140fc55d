"""Load the fine-tuned PyTorch model that ``edgewise compile`` starts from."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from .errors import ModelInputError


def load_torch_model(source: str, weights: Path | None = None) -> nn.Module:
    """``source`` is a pickled ``nn.Module`` file (``torch.save(model)``), or
    ``package.module:factory`` whose result gets the state_dict in ``weights``."""
    if ":" in source and not Path(source).exists():
        module_name, _, attr = source.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelInputError(f"{source}: cannot import factory: {exc}") from exc
        model = factory()
        if weights is not None:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        try:
            # A pickled module runs code on load: only load files you produced yourself.
            model = torch.load(source, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, ModuleNotFoundError) as exc:
            raise ModelInputError(f"{source}: cannot load a torch model: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelInputError(f"{source}: holds a {type(model).__name__}, not an nn.Module")
    return model.eval()
