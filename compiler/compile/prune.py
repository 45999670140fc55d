"""Structured channel pruning with Torch-Pruning's dependency graph.

Channels are physically removed (coupled layers — residual adds, depthwise convs, the linear
after a flatten — shrink together), so the exported graph is smaller and faster; masks alone
would leave the same dense kernels running. The layer that produces the model's output is never
pruned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
import torch_pruning as tp
from torch import nn

from ..errors import InputError
from .kernels import RoundTo, resolve_round_to

ROUND_TO = 8


class PruningError(InputError):
    """Pruning cannot be done as asked (ratio out of range, unreachable MACs target)."""


@dataclass(frozen=True)
class LayerChange:
    name: str
    op: str
    channels_before: int
    channels_after: int

    @property
    def ratio(self) -> float:
        return 1 - self.channels_after / self.channels_before


def _prunable(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return cast(nn.Linear, module).out_features  # _prunable keeps Conv2d and Linear only


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv/Linear to run in a forward pass: it produces the model's output."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in _prunable(model).values()
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise PruningError("the model has no Conv2d or Linear layer to prune")
    return order[-1]


def rounded_ratio(channels: int, ratio: float, round_to: int = ROUND_TO) -> float:
    """The ratio that keeps a multiple of ``round_to`` channels (at least one multiple) for
    layers at least ``round_to`` wide: int8 kernels compute channels in blocks, so fewer would
    run no faster (see ``kernels``) and would starve the next layer's input too. Narrower
    layers keep their exact share (and at least one channel).

    Torch-Pruning keeps ``int(channels * (1 - ratio))``: the exact ratio for 32 of 96 channels
    gives 31.999… there, so the ratio returned aims a quarter channel above ``keep``."""
    keep = max(1, round(channels * (1 - ratio)))
    if channels >= round_to:
        keep = max(round_to, round(keep / round_to) * round_to)
    return 1 - min(keep + 0.25, channels) / channels


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs), int(params)


def prune_channels(
    model: nn.Module, example: torch.Tensor, ratio: float, round_to: RoundTo = ROUND_TO
) -> nn.Module:
    """A pruned copy of ``model`` with ``ratio`` of each prunable layer's channels removed, each
    layer keeping a multiple of ``round_to`` channels (``auto``: what this machine's int8
    kernels run efficiently, see ``kernels``)."""
    if not 0 < ratio < 1:
        raise PruningError(f"pruning ratio must be in (0, 1), got {ratio}")
    multiple = resolve_round_to(round_to)
    model = copy.deepcopy(model).eval()
    keep_out = output_layer(model, example)
    ratios = {
        m: rounded_ratio(_channels(m), ratio, multiple)
        for m in _prunable(model).values()
        if m is not keep_out
    }
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        pruning_ratio_dict=ratios,
        ignored_layers=[keep_out],
    )
    pruner.step()
    return model


def prune_to_macs(
    model: nn.Module,
    example: torch.Tensor,
    target_fraction: float,
    round_to: RoundTo = ROUND_TO,
    steps: int = 10,
) -> tuple[nn.Module, float]:
    """Prune until MACs are at most ``target_fraction`` of the original; returns the model and the
    channel ratio found (bisection, so the least pruning that meets the target)."""
    if not 0 < target_fraction < 1:
        raise PruningError(f"MACs target must be a fraction in (0, 1), got {target_fraction}")
    base, _ = macs_and_params(model, example)
    low, high = 0.0, 0.95
    best: tuple[nn.Module, float] | None = None
    for _ in range(steps):
        mid = (low + high) / 2
        candidate = prune_channels(model, example, mid, round_to)
        if macs_and_params(candidate, example)[0] <= target_fraction * base:
            best, high = (candidate, mid), mid
        else:
            low = mid
    if best is None:
        candidate = prune_channels(model, example, high, round_to)
        got = macs_and_params(candidate, example)[0] / base
        if got > target_fraction:
            raise PruningError(
                f"MACs target {target_fraction:.2f} unreachable: at ratio {high} MACs are {got:.2f}"
                " of the original"
            )
        best = (candidate, high)
    return best


def layer_changes(before: nn.Module, after: nn.Module) -> list[LayerChange]:
    pruned = _prunable(after)
    return [
        LayerChange(name, type(m).__name__, _channels(m), _channels(pruned[name]))
        for name, m in _prunable(before).items()
        if name in pruned
    ]
