"""bench/mobilenet.py's MobileNetV2, the digits upscaled to 3×96×96, and bench/peers.py's
OpenVINO timing on a tiny model (fast; no timed assertions)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench.mobilenet import MobileNetV2, count_macs
from compiler.compile.export import export_onnx
from compiler.recipe.digits import load_digits_upscaled, upscaled_dataset, upscaled_preprocess


def test_full_width_is_the_papers_size():
    model = MobileNetV2()
    macs = count_macs(model, 224)
    assert 250e6 < macs < 350e6  # the paper: 300M multiply-adds
    params = sum(p.numel() for p in model.parameters())
    assert 3e6 < params < 4e6  # the paper: 3.4M
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_narrow_variant_exports_and_runs_in_onnxruntime(tmp_path):
    model = MobileNetV2(num_classes=10, width=0.35).eval()
    assert count_macs(model, 96) < count_macs(MobileNetV2(), 96) / 4
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    path = export_onnx(model, x, tmp_path / "mbv2.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4)


def test_upscaled_digits_shapes_and_labels():
    split = load_digits_upscaled(96)
    assert split.images.shape == (1797, 96, 96, 3) and split.images.dtype == np.uint8
    assert (split.images[..., 0] == split.images[..., 2]).all()  # grey in every channel
    assert sorted(set(split.labels.tolist())) == list(range(10))
    dataset = upscaled_dataset(96, seed=0)
    assert len(dataset.train.labels) + len(dataset.test.labels) == 1797
    assert dataset.preprocess == upscaled_preprocess(96)
    from agent.contract import preprocess_batch

    assert preprocess_batch(dataset.test.images[:2], dataset.preprocess).shape == (2, 3, 96, 96)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_peer_times_a_tiny_model(tmp_path):
    from bench.peers import compile_ov, ov_accuracy, ov_latency

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)
    )
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    model(torch.from_numpy(x))  # sizes the lazy layer
    path = export_onnx(model, x, tmp_path / "tiny.onnx")
    latency = ov_latency(compile_ov(path), x, runs=20)
    assert latency.p50_ms > 0 and latency.p99_ms >= latency.p50_ms
    labels = model(torch.from_numpy(x)).argmax(1).numpy()
    assert ov_accuracy(path, x, labels) == 1.0
