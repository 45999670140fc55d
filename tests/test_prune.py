"""Structured pruning removes channels for real, on plain, residual and depthwise networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nets import plain_cnn, tiny_mobilenet, tiny_resnet

from compiler.compile.export import export_onnx, verify_export
from compiler.compile.measure import onnx_params
from compiler.compile.prune import (
    PruningError,
    layer_changes,
    macs_and_params,
    output_layer,
    prune_channels,
    prune_to_macs,
    rounded_ratio,
)

EXAMPLE = torch.randn(1, 1, 28, 28)


@pytest.mark.parametrize("factory", [plain_cnn, tiny_resnet, tiny_mobilenet])
def test_half_the_channels_are_removed_and_the_graph_shrinks(factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = factory().eval()
    pruned = prune_channels(model, EXAMPLE, 0.5)
    macs_before, params_before = macs_and_params(model, EXAMPLE)
    macs_after, params_after = macs_and_params(pruned, EXAMPLE)
    assert params_after < 0.45 * params_before and macs_after < 0.45 * macs_before
    assert pruned(EXAMPLE).shape == (1, 10)
    head = output_layer(pruned, EXAMPLE)
    assert head.out_features == 10  # the output layer is never pruned
    changes = layer_changes(model, pruned)
    for change in changes:
        if change.channels_after >= 8 and change.channels_after < change.channels_before:
            assert change.channels_after % 8 == 0, change
    assert any(c.channels_after < c.channels_before for c in changes)
    # Physically smaller: the exported graph holds fewer weights, and still matches torch.
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    full, small = tmp_path / "full.onnx", tmp_path / "pruned.onnx"
    export_onnx(model, x[:2], full)
    export_onnx(pruned, x[:2], small)
    verify_export(pruned, small, x)
    assert onnx_params(small) < 0.45 * onnx_params(full)
    assert small.stat().st_size < full.stat().st_size


def test_original_model_is_left_untouched() -> None:
    model = plain_cnn().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_channels(model, EXAMPLE, 0.5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("channels", "ratio", "kept"),
    [(64, 0.5, 32), (64, 0.3, 48), (32, 0.6, 16), (24, 0.5, 16), (6, 0.5, 3), (4, 0.9, 1)],
)
def test_rounding_to_multiples_of_eight(channels: int, ratio: float, kept: int) -> None:
    assert round(channels * (1 - rounded_ratio(channels, ratio))) == kept


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval_is_refused(ratio: float) -> None:
    with pytest.raises(PruningError, match=r"\(0, 1\)"):
        prune_channels(plain_cnn(), EXAMPLE, ratio)


def test_macs_target_is_met_with_the_least_pruning() -> None:
    model = plain_cnn().eval()
    base, _ = macs_and_params(model, EXAMPLE)
    pruned, ratio = prune_to_macs(model, EXAMPLE, 0.4)
    assert macs_and_params(pruned, EXAMPLE)[0] <= 0.4 * base
    assert 0.2 < ratio < 0.6
    looser = prune_channels(model, EXAMPLE, max(0.01, ratio - 0.1))
    assert macs_and_params(looser, EXAMPLE)[0] > 0.4 * base
