"""Compile benchmark, Edgewise beside its peers, all measured in one run (batch 1, one thread):

- the recipe CNN trained on digits: torch eager, ORT fp32, ORT int8, 50% channel pruning +
  recovery + int8, ``--prune auto`` (the most pruning within the 1-point budget) + int8, and
  the peers: OpenVINO fp32, OpenVINO on Edgewise's QDQ files, NNCF int8 (bench/peers.py);
- MobileNetV2 at 224×224×3 (random weights, synthetic input: latency only): ORT fp32 and QDQ
  int8, the same peers, and what the agent serves on the QDQ file (probe → choice →
  load_package, bench/backends.py);
- MobileNetV2 (width 1.0, 8 epochs) trained on the digits upscaled to 3×96×96: ORT fp32, int8 and
  ``--prune auto`` + int8 through ``compile_model``, and the peers with their accuracy.

    .venv/bin/python bench/compile.py

Prints a table per model, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from backends import mbv2_qdq, package_file, serve
from mobilenet import MobileNetV2, count_macs, train_digits_mobilenet
from peers import compile_ov, ov_accuracy, ov_latency, peer_arms

from agent.contract import generate_keypair, preprocess_batch
from compiler.compile.datasets import Dataset
from compiler.compile.export import export_onnx
from compiler.compile.loading import SourceModel
from compiler.compile.measure import Latency, ort_latency, time_calls, torch_latency
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset, upscaled_dataset

ROUNDS = 5  # interleave the candidates so machine noise hits them alike
CALIBRATION = 300  # NNCF's calibration samples (digits models)
# The digits MobileNetV2: full width (narrower ones, 0.35 or 0.5, run ~0.2 ms at 96×96 whatever
# is done to them: per-node costs, not MACs, set their latency, and int8 gains nothing there)
MBV2_WIDTH, MBV2_EPOCHS, MBV2_RECOVERY = 1.0, 8, 3
Arm = Callable[[], Latency]


def ort_arm(path: Path, x: np.ndarray) -> Arm:
    return lambda: ort_latency(path, x, threads=1, runs=300)


def torch_arm(model: torch.nn.Module, x: np.ndarray) -> Arm:
    return lambda: torch_latency(model, x)


def ov_arm(compiled: Any, x: np.ndarray) -> Arm:
    return lambda: ov_latency(compiled, x)


def interleaved(arms: dict[str, Arm]) -> dict[str, Latency]:
    runs: dict[str, list[Latency]] = {name: [] for name in arms}
    for _ in range(ROUNDS):
        for name, arm in arms.items():
            runs[name].append(arm())
    return {
        name: Latency(
            float(np.median([r.p50_ms for r in rs])), float(np.median([r.p99_ms for r in rs]))
        )
        for name, rs in runs.items()
    }


def table(title: str, latency: dict[str, Latency], accuracy: dict, sizes: dict, base: str):
    print(f"\n{title}")
    print(f"{'arm':<30}{'top-1':>8}{'bytes':>12}{'p50 ms':>9}{'p99 ms':>9}{'vs fp32':>9}")
    for name, lat in latency.items():
        acc = f"{accuracy[name]:.4f}" if name in accuracy else "-"
        size = f"{sizes[name]:,}" if name in sizes else "-"
        print(
            f"{name:<30}{acc:>8}{size:>12}{lat.p50_ms:>9.3f}{lat.p99_ms:>9.3f}"
            f"{latency[base].p50_ms / lat.p50_ms:>8.2f}×"
        )


def builder(root: Path, name: str, model: torch.nn.Module, dataset: Dataset, spec: Any):
    """compile_model on ``model`` with options; returns its report and int8 model path."""

    def build(version: str, **kwargs: object) -> dict:
        options = CompileOptions(
            name=name,
            version=version,
            signing_key=root / "k",
            out_dir=root / name,
            progress=False,
            html=False,
            **kwargs,  # type: ignore[arg-type]
        )
        result = compile_model(SourceModel("eager", model), dataset, spec, options)
        return {"report": result.report, "model": result.package.model_path}

    return build


def int8_accuracy(built: dict) -> float:
    return float(built["report"]["stages"]["int8"]["accuracy"])


def peer_accuracy(peers: dict[str, Any], dataset: Dataset, spec: Any) -> dict[str, float]:
    x = preprocess_batch(dataset.test.images, spec)
    return {name: ov_accuracy(compiled, x, dataset.test.labels) for name, compiled in peers.items()}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def digits_cnn(root: Path) -> dict[str, object]:
    dataset = load_dataset("digits", seed=0)
    model = train_demo_model(dataset.train, PREPROCESS, progress=False)
    x = preprocess_batch(dataset.test.images[:2], PREPROCESS)
    build = builder(root, "digits-cnn", model, dataset, PREPROCESS)
    plain = build("1.0.0")
    half = build("1.0.1", prune_ratio=0.5, recovery_epochs=3)
    auto = build("1.0.2", prune_auto=True, recovery_epochs=3, round_to="auto")
    fp32_path = export_onnx(model, x, root / "digits-fp32.onnx")
    calibration = preprocess_batch(dataset.train.images[:CALIBRATION], PREPROCESS)
    peers = peer_arms(fp32_path, plain["model"], calibration)
    peers["OpenVINO auto-pruned QDQ"] = compile_ov(auto["model"])
    files = {
        "ORT fp32": fp32_path,
        "ORT int8": plain["model"],
        "ORT pruned 50% int8": half["model"],
        "ORT auto-pruned int8": auto["model"],
    }
    latency = interleaved(
        {
            "torch eager fp32": torch_arm(model, x),
            **{name: ort_arm(path, x) for name, path in files.items()},
            **{name: ov_arm(compiled, x) for name, compiled in peers.items()},
        }
    )
    fp32_acc = float(plain["report"]["stages"]["fp32"]["accuracy"])
    accuracy = {
        "torch eager fp32": fp32_acc,
        "ORT fp32": fp32_acc,
        "ORT int8": int8_accuracy(plain),
        "ORT pruned 50% int8": int8_accuracy(half),
        "ORT auto-pruned int8": int8_accuracy(auto),
        **peer_accuracy(peers, dataset, PREPROCESS),
    }
    sizes = {name: path.stat().st_size for name, path in files.items()}
    table("Digits CNN (28×28×1)", latency, accuracy, sizes, "ORT fp32")
    return cnn_figures(latency, accuracy, sizes, plain, auto)


def drop(reference: float, accuracy: float) -> float:
    return round((reference - accuracy) * 100, 3)


def cnn_figures(latency, accuracy, sizes, plain: dict, auto: dict) -> dict[str, object]:
    p50 = {name: lat.p50_ms for name, lat in latency.items()}
    base, eager, fp32_acc = p50["ORT fp32"], p50["torch eager fp32"], accuracy["ORT fp32"]
    fastest_peer = min(p50[k] for k in ("OpenVINO fp32", "OpenVINO QDQ int8", "NNCF int8"))
    return {
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": accuracy["ORT int8"],
        "int8_accuracy_drop_pt": drop(fp32_acc, accuracy["ORT int8"]),
        "fp32_p50_ms": round(base, 4),
        "torch_p50_ms": round(eager, 4),
        "int8_p50_ms": round(p50["ORT int8"], 4),
        "int8_speedup_vs_fp32": ratio(base, p50["ORT int8"]),
        "torch_slowdown_vs_fp32": ratio(eager, base),
        "int8_size_ratio": round(sizes["ORT int8"] / sizes["ORT fp32"], 4),
        # the automatically pruned model (--prune auto): the goal's figures
        "auto_ratio": auto["report"]["prune_search"]["chosen"],
        "pruned_int8_accuracy": accuracy["ORT auto-pruned int8"],
        "pruned_int8_accuracy_drop_pt": drop(fp32_acc, accuracy["ORT auto-pruned int8"]),
        "pruned_int8_p50_ms": round(p50["ORT auto-pruned int8"], 4),
        "pruned_int8_speedup_vs_fp32": ratio(base, p50["ORT auto-pruned int8"]),
        "pruned_int8_speedup_vs_torch": ratio(eager, p50["ORT auto-pruned int8"]),
        "pruned_int8_size_ratio": round(sizes["ORT auto-pruned int8"] / sizes["ORT fp32"], 4),
        # 50% channel pruning, fixed ratio
        "half_pruned_int8_accuracy_drop_pt": drop(fp32_acc, accuracy["ORT pruned 50% int8"]),
        "half_pruned_int8_speedup_vs_fp32": ratio(base, p50["ORT pruned 50% int8"]),
        "half_pruned_int8_speedup_vs_torch": ratio(eager, p50["ORT pruned 50% int8"]),
        # the peers
        "openvino_fp32_p50_ms": round(p50["OpenVINO fp32"], 4),
        "openvino_qdq_int8_p50_ms": round(p50["OpenVINO QDQ int8"], 4),
        "openvino_auto_pruned_qdq_p50_ms": round(p50["OpenVINO auto-pruned QDQ"], 4),
        "nncf_int8_p50_ms": round(p50["NNCF int8"], 4),
        "nncf_int8_accuracy_drop_pt": drop(fp32_acc, accuracy["NNCF int8"]),
        "pruned_int8_vs_fastest_peer": ratio(fastest_peer, p50["ORT auto-pruned int8"]),
        "target": plain["report"]["environment"]["target"],
    }


def mbv2_224(root: Path) -> dict[str, object]:
    """Latency only: random weights, synthetic input and calibration (64 samples)."""
    qdq, x = mbv2_qdq(root)
    fp32_path = root / "mbv2-224-fp32.onnx"  # written by mbv2_qdq beside the QDQ file
    calibration = np.random.default_rng(1).standard_normal((64, 3, 224, 224)).astype(np.float32)
    peers = peer_arms(fp32_path, qdq, calibration)
    from compiler.recipe.digits import upscaled_preprocess

    package = package_file(qdq, upscaled_preprocess(224), 1000, x, root, root / "k")
    served = serve(package)
    feeds = {served.session.runner.get_inputs()[0].name: np.ascontiguousarray(x[:1])}
    served_name = f"agent served ({served.backend})"
    arms = {
        "ORT fp32": ort_arm(fp32_path, x),
        "ORT QDQ int8": ort_arm(qdq, x),
        **{name: ov_arm(compiled, x) for name, compiled in peers.items()},
        served_name: lambda: time_calls(lambda: served.session.runner.run(None, feeds), 300),
    }
    latency = interleaved(arms)
    sizes = {"ORT fp32": fp32_path.stat().st_size, "ORT QDQ int8": qdq.stat().st_size}
    macs = count_macs(MobileNetV2(), 224)
    table(f"MobileNetV2 224×224×3 ({macs / 1e6:.0f}M MACs)", latency, {}, sizes, "ORT fp32")
    print(
        f"agent probe: serves {served.backend}; "
        + ", ".join(
            f"{k} {v.get('p50_ms', v.get('skipped'))}" for k, v in served.probe.backends.items()
        )
    )
    p50 = {name: lat.p50_ms for name, lat in latency.items()}
    same_file = min(p50["ORT QDQ int8"], p50["OpenVINO QDQ int8"])
    return {
        "mbv2_macs": macs,
        "mbv2_served_backend": served.backend,
        "mbv2_served_vs_fastest": ratio(p50[served_name], same_file),
        "mbv2_224_p50_ms": {name: round(v, 4) for name, v in p50.items()},
        "mbv2_224_int8_speedup_vs_fp32": ratio(p50["ORT fp32"], p50["ORT QDQ int8"]),
        "mbv2_224_nncf_vs_served": ratio(p50["NNCF int8"], p50[served_name]),
        "mbv2_224_probe_p50_ms": {k: v.get("p50_ms") for k, v in served.probe.backends.items()},
    }


def mbv2_digits(root: Path) -> dict[str, object]:
    """MobileNetV2 (MBV2_WIDTH) on the digits at 3×96×96: accuracy and latency."""
    dataset = upscaled_dataset(96, seed=0)
    spec = dataset.preprocess
    model = train_digits_mobilenet(dataset.train, spec, width=MBV2_WIDTH, epochs=MBV2_EPOCHS)
    x = preprocess_batch(dataset.test.images[:2], spec)
    build = builder(root, "mbv2-digits", model, dataset, spec)
    plain = build("1.0.0")
    auto = build("1.0.1", prune_auto=True, recovery_epochs=MBV2_RECOVERY, round_to="auto")
    fp32_path = export_onnx(model, x, root / "mbv2-96-fp32.onnx")
    calibration = preprocess_batch(dataset.train.images[:CALIBRATION], spec)
    peers = peer_arms(fp32_path, plain["model"], calibration)
    files = {
        "ORT fp32": fp32_path,
        "ORT int8": plain["model"],
        "ORT auto-pruned int8": auto["model"],
    }
    latency = interleaved(
        {
            **{name: ort_arm(path, x) for name, path in files.items()},
            **{name: ov_arm(compiled, x) for name, compiled in peers.items()},
        }
    )
    fp32_acc = float(plain["report"]["stages"]["fp32"]["accuracy"])
    accuracy = {
        "ORT fp32": fp32_acc,
        "ORT int8": int8_accuracy(plain),
        "ORT auto-pruned int8": int8_accuracy(auto),
        **peer_accuracy(peers, dataset, spec),
    }
    sizes = {name: path.stat().st_size for name, path in files.items()}
    macs = count_macs(model, 96)
    table(
        f"MobileNetV2-{MBV2_WIDTH} on digits 96×96×3 ({macs / 1e6:.1f}M MACs)",
        latency,
        accuracy,
        sizes,
        "ORT fp32",
    )
    p50 = {name: lat.p50_ms for name, lat in latency.items()}
    return {
        "mbv2_digits_fp32_accuracy": fp32_acc,
        "mbv2_auto_ratio": auto["report"]["prune_search"]["chosen"],
        "mbv2_pruned_int8_speedup_vs_fp32": ratio(p50["ORT fp32"], p50["ORT auto-pruned int8"]),
        "mbv2_accuracy_drop_pt": drop(fp32_acc, accuracy["ORT auto-pruned int8"]),
        "mbv2_int8_speedup_vs_fp32": ratio(p50["ORT fp32"], p50["ORT int8"]),
        "mbv2_int8_accuracy_drop_pt": drop(fp32_acc, accuracy["ORT int8"]),
        "mbv2_nncf_int8_speedup_vs_fp32": ratio(p50["ORT fp32"], p50["NNCF int8"]),
        "mbv2_nncf_int8_accuracy_drop_pt": drop(fp32_acc, accuracy["NNCF int8"]),
        "mbv2_openvino_fp32_speedup_vs_fp32": ratio(p50["ORT fp32"], p50["OpenVINO fp32"]),
        "mbv2_digits_p50_ms": {name: round(v, 4) for name, v in p50.items()},
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("nncf").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_keypair(root / "k", root / "k.pub")
        figures = digits_cnn(root)
        figures |= mbv2_224(root)
        figures |= mbv2_digits(root)
    print("\n(batch 1, one thread; median of 5 interleaved rounds; OpenVINO pinned to f32)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
