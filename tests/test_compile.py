"""Compile the trained demo CNN: verified export, int8 within budget, signed package."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import BIN

from agent.contract import TrustStore, preprocess_batch
from compiler.digits import LABELS, PREPROCESS
from compiler.errors import AccuracyBudgetError, ExportError
from compiler.export import export_onnx, verify_export
from compiler.package import read_package
from compiler.pipeline import CompileOptions, compile_model


def test_int8_accuracy_within_one_point_of_fp32(compiled) -> None:  # type: ignore[no-untyped-def]
    report = compiled.report
    assert report.fp32.accuracy >= 0.95
    assert report.fp32.accuracy - report.int8.accuracy <= 0.01
    assert report.int8_top1_agreement >= 0.98
    assert report.int8.size_bytes < report.fp32.size_bytes / 3  # int8 weights


def test_package_is_signed_int8_and_self_describing(compiled, signing_keys) -> None:  # type: ignore[no-untyped-def]
    package = read_package(compiled.package.root)
    manifest = TrustStore.from_files([signing_keys[1]]).verify(package.envelope)
    assert manifest.metrics["int8_accuracy"] == pytest.approx(
        compiled.report.int8.accuracy, abs=1e-4
    )
    assert manifest.input.shape == (None, 1, 28, 28)
    assert manifest.postprocess.labels == LABELS
    graph = onnx.load(str(package.model_path)).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert len(manifest.model.chunks) > 1


def test_export_is_verified_against_torch(trained_model, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x = preprocess_batch(digits[1].images[:64], PREPROCESS)
    path = export_onnx(trained_model, x[:2], tmp_path / "m.onnx")
    check = verify_export(trained_model, path, x)
    assert check.max_abs_diff < 1e-3 and check.top1_agreement == 1.0
    # The same check catches a graph that does not match the model.
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    with pytest.raises(ExportError, match="diverges"):
        verify_export(other, path, x)


def test_missed_budget_fails_and_leaves_no_package(
    trained_model, digits, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    options = CompileOptions(
        name="digits-cnn", version="1.0.1", signing_key=signing_keys[0], out_dir=tmp_path,
        labels=LABELS, max_accuracy_drop=-5.0,  # impossible: int8 would have to gain 5 points
    )  # fmt: skip
    with pytest.raises(AccuracyBudgetError, match="max-accuracy-drop"):
        compile_model(trained_model, digits[0], digits[1], PREPROCESS, options)
    assert list(tmp_path.iterdir()) == []


def test_cli_train_compile_and_budget_exit_code(tmp_path: Path, signing_keys) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.pt"
    run = subprocess.run(
        [BIN / "edgewise", "train", "--out", model, "--epochs", "2"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    base = [
        BIN / "edgewise",
        "compile",
        model,
        "--name",
        "d",
        "--key",
        signing_keys[0],
        "--out",
        tmp_path / "pkgs",
    ]
    ok = subprocess.run([*base, "--version", "1.0.0"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "pkgs" / "d-1.0.0" / "manifest.json").exists()
    bad = subprocess.run(
        [*base, "--version", "1.0.1", "--max-accuracy-drop", "-5"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "max-accuracy-drop" in bad.stderr
    assert not (tmp_path / "pkgs" / "d-1.0.1").exists()


def test_cli_rejects_a_file_that_is_not_a_model(tmp_path: Path, signing_keys) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.pt"
    torch.save({"not": "a module"}, junk)
    args = ["compile", junk, "--name", "d", "--version", "1.0.0", "--key", signing_keys[0]]
    proc = subprocess.run([BIN / "edgewise", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "not an nn.Module" in proc.stderr


def test_digits_are_real_and_upscaled(digits) -> None:  # type: ignore[no-untyped-def]
    train, test = digits
    assert train.images.shape[1:] == (28, 28) and train.images.dtype == np.uint8
    assert len(train.images) + len(test.images) == 1797
    assert set(np.unique(test.labels)) == set(range(10))
