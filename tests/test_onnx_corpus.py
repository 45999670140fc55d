"""ONNX models from other tools compile: old opsets are upgraded and checked, fixed batch, any
input name, NHWC, several outputs, external data, ops ORT cannot quantize. Each corpus model is
the same small classifier, trained once on digits, written the way that tool would write it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import CorpusModel, corpus_model, train_corpus_weights
from torch import nn

from agent.config import RuntimeConfig
from agent.contract import Package, preprocess_batch
from agent.inference.runtime import ModelSession
from compiler.compile.datasets import DataError, Dataset
from compiler.compile.export import OPSET, ort_session
from compiler.compile.loading import SourceModel, load_model
from compiler.compile.onnx_source import QUANT_OPSET, prepare_onnx
from compiler.compile.pipeline import CompileOptions, CompileResult, compile_model
from compiler.compile.report_render import format_table
from compiler.errors import InputError, ModelInputError
from compiler.recipe.digits import PREPROCESS

CORPUS: dict[str, tuple[CorpusModel, str | None]] = {  # model, --output
    "opset7-ir3": (CorpusModel(opset=7), None),  # weights also listed as graph inputs
    "opset9": (CorpusModel(opset=9), None),
    "opset11-flatten": (CorpusModel(opset=11, flatten="Flatten"), None),
    "opset13": (CorpusModel(opset=13), None),
    "fixed-batch": (CorpusModel(opset=11, batch=1), None),  # Reshape to [1, -1] as well
    "named-input": (CorpusModel(opset=11, input_name="pixel_values"), None),
    "nhwc": (CorpusModel(opset=11, layout="NHWC"), None),
    "two-outputs": (CorpusModel(opset=11, features_output=True), "probs"),
    "external-data": (CorpusModel(opset=11, external_data=True), None),
    "unquantizable-op": (CorpusModel(opset=13, hidden_op="Max"), None),
}
NHWC = PREPROCESS.model_copy(update={"layout": "NHWC"})


@pytest.fixture(scope="module")
def weights(digits: Dataset) -> dict[str, np.ndarray]:
    return train_corpus_weights(digits.train, PREPROCESS)


def _options(signing_keys, out_dir: Path, **kwargs) -> CompileOptions:  # type: ignore[no-untyped-def]
    return CompileOptions(
        name="corpus", version="1.0.0", signing_key=signing_keys[0], out_dir=out_dir,
        progress=False, html=False, **kwargs,
    )  # fmt: skip


def _compile(path: Path, digits, signing_keys, out_dir, spec=PREPROCESS, **kwargs) -> CompileResult:  # type: ignore[no-untyped-def]
    options = _options(signing_keys, out_dir, **kwargs)
    return compile_model(load_model(str(path)), digits, spec, options)


def _package_accuracy(package: Package, digits: Dataset) -> float:
    """The package's own model, fed by its own manifest, on the held-out images."""
    session = ort_session(package.model_path)
    x = preprocess_batch(digits.test.images, package.manifest.preprocess)
    logits = np.concatenate(
        [session.run(None, {package.manifest.input.name: row[None]})[0] for row in x]
    )
    return float((logits.argmax(1) == digits.test.labels).mean())


def _check_served_by_agent(package: Package) -> None:
    """The agent loads it, checks the golden outputs and classifies a frame (first output)."""
    session = ModelSession(package.model_path, package.manifest, RuntimeConfig())
    session.check_golden(package.root / package.manifest.golden.path)  # type: ignore[union-attr]
    frame = np.zeros((28, 28), np.uint8)
    assert session.infer(frame).top is not None


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_model_compiles_within_budget(name, weights, digits, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, output = CORPUS[name]
    path = corpus_model(tmp_path / f"{name}.onnx", weights, model)
    spec = NHWC if model.layout == "NHWC" else PREPROCESS
    result = _compile(path, digits, signing_keys, tmp_path / "out", spec, output=output)
    report, package = result.report, result.package
    fp32, int8 = report["stages"]["fp32"]["accuracy"], report["stages"]["int8"]["accuracy"]
    print(f"{name}: opset {model.opset}, fp32 {fp32:.4f}, int8 {int8:.4f}, "
          f"float ops {[o['op'] for o in report['float_ops']]}")  # fmt: skip
    assert fp32 >= 0.9 and (fp32 - int8) * 100 <= 1.0
    env = report["environment"]
    assert env["opset"] == model.opset
    assert env.get("opset_upgraded_to") == (OPSET if model.opset < QUANT_OPSET else None)
    assert [o["op"] for o in report["float_ops"]] == (["Max"] if model.hidden_op == "Max" else [])
    table = format_table(report)
    assert f"opset {model.opset} ·" in table
    assert ("upgraded to opset" in table) == (model.opset < QUANT_OPSET)
    assert ("left float (ORT cannot quantize): Max" in table) == (model.hidden_op == "Max")
    manifest = package.manifest
    assert manifest.input.name == model.input_name
    assert manifest.input.shape[0] == (1 if model.batch == 1 else None)
    assert manifest.postprocess.softmax is False  # the model ends in Softmax already
    graph = onnx.load(str(package.model_path)).graph
    assert [o.name for o in graph.output] == ["probs"] and report["model"]["output"] == "probs"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    assert sorted(p.name for p in package.root.iterdir()) == [
        "golden.npz",
        "manifest.json",
        "model.onnx",
    ]
    assert _package_accuracy(package, digits) == pytest.approx(int8, abs=1e-5)
    _check_served_by_agent(package)


def _perturbed(convert):  # type: ignore[no-untyped-def]
    """The real converter, then one weight nudged: an upgrade that changes the function."""

    def convert_version(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        converted = convert(model, target)
        for tensor in converted.graph.initializer:
            if tensor.name == "conv_w":
                array = onnx.numpy_helper.to_array(tensor) * 1.05
                tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        return converted

    return convert_version


def test_upgrade_that_changes_outputs_fails_and_leaves_no_package(
    weights, digits, signing_keys, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    path = corpus_model(tmp_path / "m.onnx", weights, CorpusModel(opset=11))
    monkeypatch.setattr(
        onnx.version_converter,
        "convert_version",
        _perturbed(onnx.version_converter.convert_version),
    )
    out = tmp_path / "out"
    with pytest.raises(
        ModelInputError, match=r"upgrading opset 11 to 18 changed the model's outputs"
    ) as err:
        _compile(path, digits, signing_keys, out)
    assert "\n" not in str(err.value) and "re-export the model at opset 13" in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_output_choice_and_its_errors(weights, digits, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = corpus_model(tmp_path / "m.onnx", weights, CorpusModel(features_output=True))
    with pytest.raises(
        ModelInputError,
        match=r"'features' has shape \[32\].*outputs: features, probs; choose with --output",
    ):
        _compile(path, digits, signing_keys, tmp_path / "a")  # the first output: the features
    with pytest.raises(InputError, match="no output 'scores'; choose one of features, probs"):
        _compile(path, digits, signing_keys, tmp_path / "b", output="scores")
    torch_model = SourceModel("eager", nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    options = _options(signing_keys, tmp_path / "c", output="probs")
    with pytest.raises(ModelInputError, match="one output, 'logits'"):
        compile_model(torch_model, digits, PREPROCESS, options)
    for out in ("a", "b", "c"):
        assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir())


def test_inputs_the_device_cannot_feed_are_named(weights, digits, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    nhwc = corpus_model(tmp_path / "nhwc.onnx", weights, CorpusModel(opset=11, layout="NHWC"))
    with pytest.raises(
        DataError, match=r'the model takes NHWC: set layout = "NHWC" in --preprocess'
    ):
        _compile(nhwc, digits, signing_keys, tmp_path / "a")
    nchw = corpus_model(tmp_path / "nchw.onnx", weights, CorpusModel())
    with pytest.raises(DataError, match=r'the model takes NCHW: set layout = "NCHW"'):
        _compile(nchw, digits, signing_keys, tmp_path / "b", spec=NHWC)
    batch4 = corpus_model(tmp_path / "b4.onnx", weights, CorpusModel(batch=4))
    with pytest.raises(
        ModelInputError, match="fixed batch of 4; the device runs one frame at a time"
    ):
        _compile(batch4, digits, signing_keys, tmp_path / "c")


def test_opset_older_than_7_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["input"], ["out"])], "old",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 4])],
    )  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save(model, str(tmp_path / "old.onnx"))
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ModelInputError, match="opset 6 is older than 7"):
        prepare_onnx(tmp_path / "old.onnx", tmp_path / "out.onnx", x, None, tmp_path)


def test_missing_external_data_is_named(weights, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = corpus_model(tmp_path / "m.onnx", weights, CorpusModel(external_data=True))
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ModelInputError, match=r"not a valid ONNX model: .*m\.onnx\.data"):
        load_model(str(path))


def test_upgrade_falls_back_to_13_then_says_why(weights, digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = corpus_model(tmp_path / "m.onnx", weights, CorpusModel(opset=9))
    x = preprocess_batch(digits.test.images[:32], PREPROCESS)
    convert = onnx.version_converter.convert_version

    def no_adapter_above_13(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        if target > QUANT_OPSET:
            raise RuntimeError(f"No Adapter To Version ${target} for Foo")
        return convert(model, target)

    monkeypatch.setattr(onnx.version_converter, "convert_version", no_adapter_above_13)
    source = prepare_onnx(path, tmp_path / "out.onnx", x, None, tmp_path)
    assert (source.opset, source.upgraded_to) == (9, QUANT_OPSET)
    assert source.upgrade_check is not None and source.upgrade_check.top1_agreement == 1.0

    def no_adapter(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        raise RuntimeError(f"No Adapter To Version ${target} for Foo")

    monkeypatch.setattr(onnx.version_converter, "convert_version", no_adapter)
    with pytest.raises(ModelInputError, match="cannot upgrade opset 9 to 13 or later") as err:
        prepare_onnx(path, tmp_path / "out.onnx", x, None, tmp_path)
    assert "to 18: No Adapter" in str(err.value) and "\n" not in str(err.value)


def test_cli_serves_the_output_it_is_told(weights, signing_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`edgewise compile --output probs` on an opset-11 file with two outputs."""
    from compiler.cli import main

    path = corpus_model(tmp_path / "two.onnx", weights, CorpusModel(opset=11, features_output=True))
    base = ["compile", str(path), "--name", "two", "--version", "1.0.0", "--no-html",
            "--key", str(signing_keys[0]), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*base, "--output", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and not (tmp_path / "out").exists()
    assert main([*base, "--output", "probs"]) == 0
    graph = onnx.load(str(tmp_path / "out" / "two-1.0.0" / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["probs"]
