"""Kernel-friendly channel counts (``--round-to``) and the per-layer MAC rate in the report: the
rounding rule on known staircases, pruning that keeps the chosen multiple, the option's refusals,
and per-layer figures read from real ONNX Runtime profiles."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from conftest import _compile
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compiler.cli import main
from compiler.compile.kernels import CANDIDATES, WIDTHS, choose_multiple, choose_round_to
from compiler.compile.layer_speed import layer_speed
from compiler.compile.prune import layer_changes, output_layer, prune_channels, rounded_ratio
from compiler.compile.quantize import prepare, quantize
from compiler.compile.report_render import format_table


def staircase(step: int, overhead: float = 0.3) -> dict[int, float]:
    """Rates of a kernel whose time grows by one unit per ``step`` channels (0: per channel)."""
    time = {w: overhead + (math.ceil(w / step) * step if step else w) for w in WIDTHS}
    return {w: w / t for w, t in time.items()}


@pytest.mark.parametrize(("step", "chosen"), [(16, 16), (8, 8), (32, 32), (64, 32), (0, 8)])
def test_the_multiple_chosen_is_the_kernels_step(step: int, chosen: int) -> None:
    """Coarser than every candidate: the largest; no step at all: the smallest (any is free)."""
    assert choose_multiple(staircase(step)) == chosen


def test_noise_below_the_tolerance_does_not_move_the_choice() -> None:
    rng = np.random.default_rng(0)
    noisy = {w: r * (1 + rng.uniform(-0.03, 0.03)) for w, r in staircase(16).items()}
    assert choose_multiple(noisy) == 16


def test_this_machines_profile_is_measured_once() -> None:
    profile = choose_round_to()
    assert profile is choose_round_to()  # cached: one measurement per process
    assert profile.multiple in CANDIDATES
    assert sorted(profile.rates) == list(WIDTHS) and all(r > 0 for r in profile.rates.values())
    assert profile.as_dict()["multiple"] == profile.multiple


def wide_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 96, 3), nn.ReLU(), nn.Conv2d(96, 80, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(80, 112), nn.ReLU(), nn.Linear(112, 10),
    )  # fmt: skip


@pytest.mark.parametrize("round_to", [16, 32, "auto"])
@pytest.mark.parametrize("ratio", [0.3, 0.45, 0.6])
def test_wide_layers_keep_multiples_of_the_granularity(round_to: Any, ratio: float) -> None:
    torch.manual_seed(0)
    model, example = wide_net().eval(), torch.randn(1, 1, 12, 12)
    multiple = choose_round_to().multiple if round_to == "auto" else round_to
    pruned = prune_channels(model, example, ratio, round_to)
    kept = {c.name: c.channels_after for c in layer_changes(model, pruned)}
    last = next(n for n, m in pruned.named_modules() if m is output_layer(pruned, example))
    assert kept.pop(last) == 10  # the output layer is never pruned
    assert all(k % multiple == 0 and k >= multiple for k in kept.values()), kept
    assert any(k < c for k, c in zip(kept.values(), (96, 80, 112), strict=True))


@pytest.mark.parametrize(
    ("channels", "ratio", "kept"), [(32, 0.9, 16), (96, 0.6, 32), (80, 0.35, 48), (12, 0.5, 6)]
)
def test_a_layer_as_wide_as_the_multiple_keeps_at_least_one(
    channels: int, ratio: float, kept: int
) -> None:
    """Fewer channels would run no faster; narrower layers keep their share."""
    assert int(channels * (1 - rounded_ratio(channels, ratio, 16))) == kept  # as Torch-Pruning


def _compile_args(keys: tuple[Path, Path], tmp_path: Path, *flags: str) -> list[str]:
    return [
        "compile", "nets:plain_cnn", "--name", "d", "--version", "1.0.0",
        "--key", str(keys[0]), "--out", str(tmp_path / "out"), *flags,
    ]  # fmt: skip


@pytest.mark.parametrize("value", ["abc", "0", "-16", "8.5", "257", ""])
def test_a_bad_round_to_is_one_line_and_exit_2(  # type: ignore[no-untyped-def]
    value: str, signing_keys, tmp_path: Path, capsys
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(_compile_args(signing_keys, tmp_path, "--prune-ratio", "0.5", "--round-to", value))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--round-to" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--round-to", "16"], "--round-to applies when pruning"),
        (["--prune-ratio", "0.5", "--round-to", "auto", "--target", "?"], "measures this machine"),
    ],
)
def test_round_to_where_it_cannot_apply_is_refused(  # type: ignore[no-untyped-def]
    flags: list[str], message: str, signing_keys, tmp_path: Path, capsys
) -> None:
    from compiler.compile.quantize import TARGETS, detect_target

    other = next(t for t in TARGETS if t != detect_target())
    flags = [other if f == "?" else f for f in flags]
    assert main(_compile_args(signing_keys, tmp_path, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgewise: compile failed: ")
    assert message in err and not (tmp_path / "out").exists()


def small_onnx(path: Path) -> Path:
    """Conv(3→8, 3×3, pad 1) → ReLU → Conv(8→16, 3×3) → ReLU → Flatten → Gemm(16·14·14 → 10),
    input 3×16×16 with a symbolic batch."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
        "w2": rng.standard_normal((16, 8, 3, 3)) * 0.2, "b2": rng.standard_normal(16) * 0.1,
        "w3": rng.standard_normal((10, 16 * 14 * 14)) * 0.02, "b3": np.zeros(10),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_layer_speed_reads_every_layer_from_real_profiles(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    prepared = prepare(small_onnx(tmp_path / "small.onnx"), tmp_path / "prepared.onnx")
    int8 = quantize(prepared, tmp_path / "int8.onnx", x, "x", target="x86-vnni")
    rows = {row.name: row for row in layer_speed(prepared, int8, x)}
    assert set(rows) == {"conv1", "conv2", "fc"}
    # MACs by hand: output elements × inputs each one reads
    assert rows["conv1"].macs == (8 * 16 * 16) * (3 * 3 * 3) == 55_296
    assert rows["conv2"].macs == (16 * 14 * 14) * (8 * 3 * 3) == 225_792
    assert rows["fc"].macs == 10 * (16 * 14 * 14) == 31_360
    assert [rows[n].out_channels for n in ("conv1", "conv2", "fc")] == [8, 16, 10]
    for row in rows.values():  # fused kernels (ReLU into conv, QDQ into QLinearConv) found
        assert row.fp32_us and row.fp32_us > 0 and row.int8_us and row.int8_us > 0, row
        assert row.fp32_gmacs and row.fp32_gmacs > 0 and row.int8_gmacs and row.int8_gmacs > 0
        assert row.as_dict()["int8_gmacs"] == row.int8_gmacs


def test_the_text_report_shows_the_rates() -> None:
    report = {
        "layer_speed": [
            {"name": "conv2", "op": "Conv", "out_channels": 48, "macs": 7962624,
             "fp32_us": 80.0, "fp32_gmacs": 99.5, "int8_us": 30.2, "int8_gmacs": 263.7},
            {"name": "fc", "op": "Gemm", "out_channels": None, "macs": "?"},
        ],
        "kernels": {"multiple": 16, "conv": "int8", "rates": [{"width": 16, "gmacs": 140.2}]},
    }  # fmt: skip
    text = format_table(report)
    conv = next(line for line in text.splitlines() if line.strip().startswith("conv2"))
    assert conv.split()[-4:] == ["80.0", "99.5", "30.2", "263.7"]
    fc = next(line for line in text.splitlines() if line.strip().startswith("fc"))
    assert fc.split()[2:] == ["-"] * 6
    assert "channels kept in multiples of 16" in text and "16: 140" in text


def test_a_compile_with_auto_rounding_reports_rates_per_layer(  # type: ignore[no-untyped-def]
    trained_model, digits, signing_keys, tmp_path: Path
) -> None:
    result = _compile(
        copy.deepcopy(trained_model), digits, version="1.0.0", signing_key=signing_keys[0],
        out_dir=tmp_path, prune_ratio=0.5, round_to="auto", recovery_epochs=1, html=False,
        max_accuracy_drop=10.0,
    )  # fmt: skip
    multiple = choose_round_to().multiple
    report = result.report
    assert report.kernels is not None and report.kernels.multiple == multiple
    pruned = [row for row in report.layers if row.channels_after and row.name != "8"]
    assert pruned and all(row.channels_after % multiple == 0 for row in pruned)  # type: ignore[operator]
    speed = report.layer_speed
    assert speed is not None and [s.name for s in speed] == [row.name for row in report.layers]
    assert all(s.macs > 0 and s.int8_gmacs and s.fp32_gmacs for s in speed)
    assert report["kernels"]["multiple"] == multiple  # in the manifest's metrics too
    assert len(report["layer_speed"]) == len(speed)
    assert "layer speed" in format_table(report)
