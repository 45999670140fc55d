"""``edgewise compile`` from the command line: inputs it takes, and every bad input named in one
line with exit code 2 and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from compiler.cli import main


@pytest.fixture
def model_file(trained_model, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.pt"
    torch.save(trained_model, path)
    return path


def compile_args(model: object, key: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compile", str(model), "--name", "d", "--version", "1.0.0", "--key", str(key),
        "--out", str(out), "--no-html", *extra,
    ]  # fmt: skip


def assert_fails_cleanly(capsys, args: list[str], out: Path, *needles: str, code: int = 2) -> None:  # type: ignore[no-untyped-def]
    """``code``: 2 the command is wrong, 65 a file's content, 1 the compile itself failed."""
    try:
        got = main(args)
    except SystemExit as exit_:  # refused by argument parsing, before any work
        got = exit_.code
    assert got == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() or not any(out.iterdir())


def test_cli_compiles_a_pickled_module(model_file, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert main(compile_args(model_file, signing_keys[0], out, "--prune-ratio", "0.5")) == 0
    printed = capsys.readouterr().out
    assert "pruned" in printed and "int8" in printed
    assert (out / "d-1.0.0" / "manifest.json").exists()


def test_unknown_model_format(signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00definitely not a model" * 50)
    out = tmp_path / "out"
    assert_fails_cleanly(
        capsys, compile_args(junk, signing_keys[0], out), out, "unknown model format", code=65
    )


def test_export_failure_names_the_op(signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    args = compile_args("nets:unexportable", signing_keys[0], out)
    assert_fails_cleanly(capsys, args, out, "aten.linalg_eig", code=1)  # the export failed


def test_data_that_does_not_fit_the_input(model_file, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "rgb.toml"
    spec.write_text('width = 28\nheight = 28\ncolor = "RGB"\n')
    out = tmp_path / "out"
    args = compile_args(model_file, signing_keys[0], out, "--preprocess", str(spec))
    assert_fails_cleanly(capsys, args, out, "does not fit the model", "--preprocess", code=65)


def test_empty_data_folder(model_file, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "data" / "cat").mkdir(parents=True)
    out = tmp_path / "out"
    args = compile_args(model_file, signing_keys[0], out, "--data", str(tmp_path / "data"))
    assert_fails_cleanly(capsys, args, out, "hold no images", code=65)


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.1", "half"])
def test_pruning_ratio_outside_open_interval(
    model_file, signing_keys, tmp_path, capsys, ratio
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(compile_args(model_file, signing_keys[0], out, "--prune-ratio", ratio))
    assert exit_info.value.code == 2
    assert "--prune-ratio" in capsys.readouterr().err
    assert not out.exists()


def test_missing_or_unreadable_signing_key(model_file, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert_fails_cleanly(
        capsys, compile_args(model_file, tmp_path / "nope.key", out), out, "nope.key"
    )
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    assert_fails_cleanly(
        capsys, compile_args(model_file, garbage, out), out, "garbage.key", code=65
    )


def test_missed_budget_exit_code(model_file, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    args = compile_args(model_file, signing_keys[0], out, "--max-accuracy-drop", "-5")
    assert_fails_cleanly(capsys, args, out, "max-accuracy-drop")  # -5: refused as usage


def test_image_folder_and_npz_data(digits, model_file, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "images"
    for i in range(60):
        label = int(digits.test.labels[i])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / str(label) / f"{i}.png"), digits.test.images[i])
    spec = tmp_path / "spec.json"
    spec.write_text(
        '{"width": 28, "height": 28, "color": "GRAY", "mean": [0.1307], "std": [0.3081]}'
    )
    npz = tmp_path / "data.npz"
    np.savez(npz, x=digits.test.images[:60], y=digits.test.labels[:60])
    for data in (folder, npz):
        out = tmp_path / f"out-{data.suffix or 'dir'}"
        args = compile_args(
            model_file, signing_keys[0], out, "--data", str(data), "--preprocess", str(spec),
            "--max-accuracy-drop", "100",
        )  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
        assert (out / "d-1.0.0" / "model.onnx").exists()


def test_npz_without_labels_array(model_file, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    npz = tmp_path / "bad.npz"
    np.savez(npz, images=np.zeros((4, 28, 28), np.uint8))
    out = tmp_path / "out"
    args = compile_args(model_file, signing_keys[0], out, "--data", str(npz))
    assert_fails_cleanly(capsys, args, out, "'x'", "'y'", code=65)


def test_a_package_that_fails_while_written_leaves_nothing(compiled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compiler.compile.package import write_package

    manifest, out = compiled.package.manifest, tmp_path / "new" / "out"
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    with pytest.raises(ValueError, match="PEM"):
        write_package(
            out, compiled.package.model_path, name="d", version="1.0.0",
            input_spec=manifest.input, preprocess=manifest.preprocess,
            postprocess=manifest.postprocess, metrics={}, signing_key=bad_key,
        )  # fmt: skip
    assert not out.exists()
