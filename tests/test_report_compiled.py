"""The compile report of a real compile (the session's digits package): sample counts and
confusion that agree with the accuracy, layers named by module, the package on the page, and
the previous version found by the documented rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compiler.compile.report_package import html_path, key_ids
from compiler.compile.report_previous import find_previous, previous_for
from compiler.errors import InputError


def test_every_accuracy_has_its_sample_count_and_confusion(compiled: Any, digits: Any) -> None:
    stages = compiled.report["stages"]
    held_out = len(digits.test.labels)
    for name in ("fp32", "pruned", "int8"):
        stage = stages[name]
        assert stage["samples"] == held_out
        matrix = stage["confusion"]
        assert sum(map(sum, matrix)) == held_out
        hits = sum(matrix[i][i] for i in range(len(matrix)))
        assert hits / held_out == pytest.approx(stage["accuracy"], abs=1e-5)
        per_class = stage["per_class_accuracy"]
        for index, accuracy in per_class.items():
            row = matrix[int(index)]
            assert row[int(index)] / sum(row) == pytest.approx(accuracy, abs=1e-5)
    assert compiled.report["labels"] == list(digits.labels)


def test_layers_carry_their_torch_module(compiled: Any) -> None:
    layers = compiled.report["layers"]
    assert [(layer["name"], layer["module"]) for layer in layers] == [
        ("0", "Conv2d"), ("2", "Conv2d"), ("6", "Linear"), ("8", "Linear"),
    ]  # fmt: skip


def test_the_page_names_the_package(compiled: Any) -> None:
    package = compiled.package
    assert compiled.html == html_path(package.root)
    text = compiled.html.read_text(encoding="utf-8")
    assert package.manifest.model.sha256 in text
    (kid,) = key_ids(package.envelope)
    assert len(kid) == 16 and kid in text
    assert package.manifest.created_at in text
    assert "0 (Conv2d)" in text
    assert "<h2>Confusion matrix, int8 (rows: true class)</h2>" in text
    assert "On devices" not in text  # no device has reported yet


def test_the_previous_version_is_the_highest_lower_one(compiled: Any, tmp_path: Path) -> None:
    out = compiled.package.root.parent
    assert find_previous(out, "digits-cnn", "1.0.1") == compiled.package.root
    assert find_previous(out, "digits-cnn", "1.0.0") is None  # not itself
    assert find_previous(out, "other", "9.0.0") is None
    assert find_previous(tmp_path / "missing", "digits-cnn", "2.0.0") is None
    figures = previous_for(None, out, "digits-cnn", "2.0.0")
    assert figures is not None and figures["version"] == "1.0.0"
    assert figures["sha256"] == compiled.package.manifest.model.sha256
    int8 = figures["stages"]["int8"]
    assert int8["samples"] == compiled.report["stages"]["int8"]["samples"]
    assert json.dumps(figures)  # travels in the signed manifest as plain JSON


def test_a_bad_previous_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        previous_for(tmp_path, tmp_path, "digits-cnn", "1.0.0")
    message = str(info.value)
    assert message.startswith(f"--previous {tmp_path}: not a package folder")
    assert "\n" not in message


def test_cli_refuses_a_bad_previous_in_one_line(  # type: ignore[no-untyped-def]
    trained_model, signing_keys, tmp_path, capsys
) -> None:
    import torch
    from test_compile_cli import assert_fails_cleanly, compile_args

    model = tmp_path / "model.pt"
    torch.save(trained_model, model)
    out = tmp_path / "out"
    args = compile_args(model, signing_keys[0], out, "--previous", str(tmp_path / "nothing"))
    assert_fails_cleanly(
        capsys, args, out, f"--previous {tmp_path / 'nothing'}: not a package folder"
    )
