"""Compile: pruning + recovery, verified export, int8 within the accuracy budget, a signed
package with its report and golden inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from agent.contract import TrustStore, preprocess_batch, read_package
from compiler.compile.datasets import Dataset
from compiler.compile.export import export_onnx, ort_session, verify_export
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.errors import AccuracyBudgetError, ExportError
from compiler.recipe.digits import LABELS, PREPROCESS


def test_pruned_int8_within_one_point_of_fp32(compiled) -> None:  # type: ignore[no-untyped-def]
    stages = compiled.report["stages"]
    assert list(stages) == ["fp32", "pruned", "int8"]
    fp32, pruned, int8 = stages["fp32"], stages["pruned"], stages["int8"]
    assert fp32["accuracy"] >= 0.95
    assert fp32["accuracy"] - int8["accuracy"] <= 0.01
    assert int8["top1_agreement"] >= 0.97
    assert pruned["params"] < 0.3 * fp32["params"] and pruned["macs"] < 0.3 * fp32["macs"]
    assert int8["file_bytes"] < 0.1 * fp32["file_bytes"]
    assert compiled.report["budget"]["met"] is True


def test_report_has_layers_environment_and_latencies(compiled) -> None:  # type: ignore[no-untyped-def]
    report = compiled.report
    layers = {row["name"]: row for row in report["layers"]}
    assert layers["2"]["channels_before"] == 64 and layers["2"]["channels_after"] == 32
    assert layers["8"]["pruning_ratio"] == 0.0  # output layer untouched
    assert all(row["quantized"] for row in report["layers"]) and report["float_layers"] == []
    for stage in report["stages"].values():
        assert 0 < stage["ort_p50_ms_1t"] <= stage["ort_p99_ms_1t"]
        assert stage["ort_p50_ms_all"] > 0
    assert report["torch_eager"]["p50_ms_1t"] > 0
    assert report["export"]["top1_agreement"] == 1.0
    assert report["environment"]["opset"] >= 17 and report["environment"]["target"]


def test_package_is_signed_int8_with_golden_and_report(compiled, signing_keys) -> None:  # type: ignore[no-untyped-def]
    package = read_package(compiled.package.root)
    manifest = TrustStore.from_files([signing_keys[1]]).verify(package.envelope)
    assert manifest.metrics == json.loads(json.dumps(compiled.report.as_metrics()))
    assert manifest.input.shape == (None, 1, 28, 28)
    assert manifest.postprocess.labels == LABELS
    graph = onnx.load(str(package.model_path)).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert len(manifest.model.chunks) > 1
    assert manifest.golden is not None
    golden = np.load(package.root / manifest.golden.path)
    session = ort_session(package.model_path)
    np.testing.assert_allclose(
        session.run(None, {"input": golden["inputs"]})[0],
        golden["outputs"],
        atol=manifest.golden_atol,
    )
    html = compiled.html
    assert html is not None and html.parent == package.root.parent
    assert html.read_text().count("data:image/png;base64,") >= 2


def test_export_is_verified_against_torch(trained_model, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x = preprocess_batch(digits.test.images[:64], PREPROCESS)
    path = export_onnx(trained_model, x[:2], tmp_path / "m.onnx")
    check = verify_export(trained_model, path, x)
    assert check.max_abs_diff < 1e-3 and check.top1_agreement == 1.0
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    with pytest.raises(ExportError, match="diverges"):
        verify_export(other, path, x)


def _options(signing_keys, tmp_path: Path, **kwargs) -> CompileOptions:  # type: ignore[no-untyped-def]
    defaults = {"progress": False, "html": False}
    return CompileOptions(
        name="digits-cnn", version="1.0.1", signing_key=signing_keys[0], out_dir=tmp_path / "out",
        **(defaults | kwargs),
    )  # fmt: skip


def with_outlier_channel(model: torch.nn.Module) -> torch.nn.Module:
    """The same function, but conv 0's channel 0 is 1000× larger and conv 2 divides it back:
    per-tensor int8 activations then crush every other channel."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight[0] *= 1000
        model[0].bias[0] *= 1000
        model[2].weight[:, 0] /= 1000
    return model.eval()


def test_sensitive_layers_fall_back_to_float(trained_model, digits, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fragile = with_outlier_channel(trained_model)
    options = _options(signing_keys, tmp_path)
    result = compile_model(SourceModel("eager", fragile), digits, PREPROCESS, options)
    report = result.report
    assert report["float_layers"], "the outlier should force a float fallback"
    assert "2" in report["float_layers"] or "0" in report["float_layers"]
    floated = [row for row in report["layers"] if not row["quantized"]]
    assert {row["name"] for row in floated} == set(report["float_layers"])
    assert all(row["sensitivity"] is not None for row in report["layers"])
    ranked = sorted(report["layers"], key=lambda row: row["sensitivity"], reverse=True)
    assert ranked[0]["name"] in report["float_layers"]
    assert report["budget"]["accuracy_drop"] <= 1.0


def test_missed_budget_fails_and_leaves_no_package(
    trained_model, digits, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # Impossible: int8 would have to beat fp32 by 5 points.
    options = _options(signing_keys, tmp_path, max_accuracy_drop=-5.0)
    with pytest.raises(AccuracyBudgetError, match="max-accuracy-drop"):
        compile_model(SourceModel("eager", trained_model), digits, PREPROCESS, options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_onnx_and_torchscript_inputs_skip_pruning(
    trained_model, digits, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    x = preprocess_batch(digits.test.images[:2], PREPROCESS)
    onnx_path = export_onnx(trained_model, x, tmp_path / "other-tool.onnx")
    script = torch.jit.script(trained_model)
    for name, source in [
        ("onnx", SourceModel("onnx", onnx_path=onnx_path)),
        ("torchscript", SourceModel("torchscript", script)),
    ]:
        options = _options(signing_keys, tmp_path / name, prune_ratio=0.5)
        report = compile_model(source, digits, PREPROCESS, options).report
        assert list(report["stages"]) == ["fp32", "int8"], name
        assert report["stages"]["int8"]["file_bytes"] < 0.3 * report["stages"]["fp32"]["file_bytes"]


def test_small_data_set_compiles(trained_model, digits, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    small = Dataset(
        type(digits.train)(digits.train.images[:40], digits.train.labels[:40]),
        type(digits.test)(digits.test.images[:20], digits.test.labels[:20]),
        LABELS,
    )
    options = _options(signing_keys, tmp_path, max_accuracy_drop=100, calibration="entropy")
    result = compile_model(SourceModel("eager", trained_model), small, PREPROCESS, options)
    assert result.report["environment"]["calibration"] == "entropy"
