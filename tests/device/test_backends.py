"""Backends chosen on the device: the probe child loads a candidate on each installed backend,
checks it against the golden outputs, times it, and names the one to serve; the serving process
opens the package on that choice. Real ONNX Runtime (and OpenVINO, where installed) sessions on
models built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from agent.config import RuntimeConfig
from agent.contract import (
    Manifest,
    Package,
    PreprocessSpec,
    Topics,
    describe_blob,
    preprocess,
    preprocess_into,
)
from agent.delivery.probe import ProbeError, pick_backend, probe_candidate
from agent.inference.backends import CHOICE, DEFAULT, OrtRunner, installed, open_runner
from agent.inference.onnxrt import ort
from agent.inference.pipeline import ModelSlot
from agent.inference.runtime import load_package
from agent.notify import SystemdNotifier
from agent.preflight import backend_problems
from agent.upstream.status import StatusBoard
from onnx import TensorProto, helper, numpy_helper

SPEC = PreprocessSpec(width=8, height=8, color="GRAY", scale=1 / 255)
LABELS = tuple(str(d) for d in range(4))


def conv_model(path: Path, contrib: bool = False) -> Path:
    """A 3×3 conv with four filters, averaged to four logits; ``contrib`` routes the image
    through com.microsoft's Inverse first (ONNX Runtime has it; OpenVINO does not)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["conv"], ["mean"], axes=[2, 3], keepdims=0),
    ]
    if contrib:
        nodes.insert(0, helper.make_node("Inverse", ["input"], ["image"], domain="com.microsoft"))
    else:
        nodes.insert(0, helper.make_node("Identity", ["input"], ["image"]))
    graph = helper.make_graph(
        [*nodes, helper.make_node("Identity", ["mean"], ["logits"])],
        path.stem,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def package(root: Path, contrib: bool = False, golden_shift: float = 0.0) -> Package:
    """A package whose golden outputs are ONNX Runtime's own (``golden_shift`` off them)."""
    root.mkdir(parents=True)
    model = conv_model(root / "model.onnx", contrib)
    inputs = np.random.default_rng(1).uniform(0.1, 1, (3, 1, 8, 8)).astype(np.float32)
    inputs += np.eye(8, dtype=np.float32)  # invertible, for the contrib model
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = plain.run(None, {"input": inputs})[0] + golden_shift
    np.savez(root / "golden.npz", inputs=inputs, outputs=outputs)
    manifest = Manifest(
        name="conv", version="1.0.0", created_at="2026-12-01T00:00:00+00:00",
        model=describe_blob(model), preprocess=SPEC, golden=describe_blob(root / "golden.npz"),
        input={"name": "input", "shape": [None, 1, 8, 8]},
        postprocess={"kind": "classification", "labels": LABELS},
    )  # fmt: skip
    return Package(root, b"{}", manifest)


def probe(pkg: Package, **runtime: object):  # type: ignore[no-untyped-def]
    return probe_candidate(
        pkg.model_path, pkg.manifest, pkg.golden_path, RuntimeConfig(**runtime), runs=20
    )


def test_auto_tries_every_installed_backend_and_serves_one_that_matched(tmp_path: Path) -> None:
    report = probe(package(tmp_path / "p"))
    assert list(report.backends) == installed()
    for figures in report.backends.values():
        assert "skipped" not in figures, report.backends
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]  # type: ignore[operator]
    assert report.backend == pick_backend({n: f["p50_ms"] for n, f in report.backends.items()})  # type: ignore[misc]
    assert report.latency_p50_ms == report.backends[report.backend]["p50_ms"]


def test_a_fixed_backend_is_the_only_one_tried(tmp_path: Path) -> None:
    report = probe(package(tmp_path / "p"), backend="onnxruntime")
    assert report.backend == "onnxruntime" and list(report.backends) == ["onnxruntime"]


@pytest.mark.skipif("openvino" not in installed(), reason="needs the openvino extra")
def test_a_backend_that_cannot_run_the_model_is_skipped_with_its_reason(tmp_path: Path) -> None:
    report = probe(package(tmp_path / "p", contrib=True))
    assert report.backend == DEFAULT
    skipped = report.backends["openvino"]["skipped"]
    assert "com.microsoft.Inverse" in str(skipped), skipped
    assert "Exception from" not in str(skipped)  # the C++ location is not the reason


def test_when_no_backend_matches_the_golden_outputs_the_candidate_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ProbeError, match="golden outputs differ from the package's"):
        probe(package(tmp_path / "p", golden_shift=0.5))


def test_the_default_keeps_serving_unless_another_is_clearly_faster() -> None:
    assert pick_backend({DEFAULT: 1.0, "openvino": 0.95}) == DEFAULT
    assert pick_backend({DEFAULT: 1.0, "openvino": 0.5}) == "openvino"
    assert pick_backend({"openvino": 0.5, "ort-cuda": 0.2}) == "ort-cuda"


def test_the_package_serves_on_the_probes_choice(tmp_path: Path) -> None:
    pkg = package(tmp_path / "p")
    chosen = installed()[-1]
    figures = {"p50_ms": 0.1, "p99_ms": 0.2}
    (pkg.root / CHOICE).write_text(json.dumps({"backend": chosen, "backends": {chosen: figures}}))
    session = load_package(pkg, RuntimeConfig())
    assert session.backend == chosen and session.measured == {chosen: figures}
    fixed = load_package(pkg, RuntimeConfig(backend="onnxruntime"))
    assert fixed.backend == "onnxruntime" and (chosen != "onnxruntime") == (fixed.measured is None)
    (pkg.root / CHOICE).write_text("{not json")
    assert load_package(pkg, RuntimeConfig()).backend == DEFAULT


def test_a_choice_no_longer_installed_falls_back_to_the_default(tmp_path: Path) -> None:
    pkg = package(tmp_path / "p")
    (pkg.root / CHOICE).write_text(json.dumps({"backend": "ort-tensorrt", "backends": {}}))
    if "ort-tensorrt" not in installed():
        assert load_package(pkg, RuntimeConfig()).backend == DEFAULT


def test_the_bound_runner_answers_like_a_plain_session(tmp_path: Path) -> None:
    """Outputs bound once and rebound when the input shape changes: every answer is a plain
    session's, and a kept output is overwritten by the next run (callers copy what they keep)."""
    model = conv_model(tmp_path / "m.onnx")
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    runner = open_runner(model, RuntimeConfig())
    assert isinstance(runner, OrtRunner)
    rng = np.random.default_rng(2)
    for batch in (1, 1, 1, 3, 3, 1):
        x = rng.uniform(size=(batch, 1, 8, 8)).astype(np.float32)
        got = runner.run(None, {"input": x})[0]
        np.testing.assert_allclose(got, plain.run(None, {"input": x})[0], rtol=1e-6)
    kept = runner.run(None, {"input": x})[0]
    other = np.flip(x, axis=3).copy()
    assert runner.run(None, {"input": other})[0] is kept
    np.testing.assert_allclose(kept, plain.run(None, {"input": other})[0], rtol=1e-6)


def test_a_fixed_backend_this_board_lacks_is_one_line_naming_what_it_needs() -> None:
    assert backend_problems("auto") == [] and backend_problems(DEFAULT) == []
    missing = [name for name in ("ort-tensorrt", "ort-xnnpack") if name not in installed()]
    for name in missing:
        (line,) = backend_problems(name)
        assert line.startswith(f"runtime.backend: {name} is not installed here (needs ")
        assert "installed: onnxruntime" in line and "\n" not in line


def test_status_and_telemetry_name_the_backend_and_its_figures(tmp_path: Path) -> None:
    pkg = package(tmp_path / "p")
    tried = {"onnxruntime": {"p50_ms": 0.1, "p99_ms": 0.2}, "openvino": {"skipped": "why"}}
    (pkg.root / CHOICE).write_text(json.dumps({"backend": "onnxruntime", "backends": tried}))
    models = ModelSlot()
    board = StatusBoard(
        device="cam-1", boot_id="b1", topics=Topics("edgewise"), source_uri="video.avi",
        models=models, notifier=SystemdNotifier(),
    )  # fmt: skip
    assert json.loads(board.payload("online"))["backend"] is None
    models.swap(load_package(pkg, RuntimeConfig()))
    expected = {"name": "onnxruntime", "measured": tried}
    assert json.loads(board.payload("online"))["backend"] == expected
    assert board.announcement()["backend"] == expected  # every telemetry message repeats it


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(width=8, height=8, color="GRAY", scale=1 / 255),
        PreprocessSpec(
            width=32,
            height=24,
            color="RGB",
            scale=1 / 255,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            resize="letterbox",
        ),
        PreprocessSpec(width=16, height=16, color="BGR", layout="NHWC", resize="center_crop"),
        PreprocessSpec(width=20, height=12, color="RGB", dtype="uint8"),
    ],
)
def test_a_frame_into_the_reused_buffer_is_the_contracts_tensor(spec: PreprocessSpec) -> None:
    """The serving path's in-place preprocessing gives exactly what the compiler evaluated with,
    frame after frame, in one buffer."""
    rng = np.random.default_rng(3)
    out = np.empty(spec.input_shape(1), spec.dtype)  # type: ignore[arg-type]
    for shape in ((48, 64, 3), (30, 30, 3), (48, 64)):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        assert preprocess_into(frame, spec, out) is out
        assert np.array_equal(out, preprocess(frame, spec))
