"""Compile benchmark: the demo CNN as fp32 (ORT), int8 (ORT) and torch eager, side by side.

    .venv/bin/python bench/compile.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from agent.contract import generate_keypair, preprocess_batch
from compiler.demo_model import train_demo_model
from compiler.digits import LABELS, PREPROCESS, train_test_split
from compiler.export import export_onnx
from compiler.measure import ort_latency
from compiler.pipeline import CompileOptions, compile_model


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    train, test = train_test_split(seed=0)
    model = train_demo_model(train, PREPROCESS, progress=False)
    x = preprocess_batch(test.images[:1], PREPROCESS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_keypair(root / "k", root / "k.pub")
        options = CompileOptions(
            name="digits-cnn", version="1.0.0", signing_key=root / "k", out_dir=root, labels=LABELS
        )
        result = compile_model(model, train, test, PREPROCESS, options)
        fp32_path = export_onnx(model, x, root / "fp32.onnx")
        fp32_all = ort_latency(fp32_path, x, threads=0)
        int8_all = ort_latency(result.package.model_path, x, threads=0)
    r = result.report
    rows = [
        ("torch eager fp32", r.fp32.accuracy, None, r.torch_latency_1t, None),
        ("ORT fp32", r.fp32.accuracy, r.fp32.size_bytes, r.fp32.ort_latency_1t, fp32_all),
        ("ORT int8 (QDQ)", r.int8.accuracy, r.int8.size_bytes, r.int8.ort_latency_1t, int8_all),
    ]
    header = ("model", "top-1", "bytes", "p50 1t ms", "p99 1t ms", "p50 all ms")
    print("{:<18}{:>8}{:>11}{:>11}{:>11}{:>12}".format(*header))
    for name, acc, size, one, every in rows:
        size_s = f"{size:,}" if size else "-"
        all_s = f"{every.p50_ms:.3f}" if every else "-"
        print(f"{name:<18}{acc:>8.4f}{size_s:>11}{one.p50_ms:>11.3f}{one.p99_ms:>11.3f}{all_s:>12}")
    figures = {
        "fp32_accuracy": r.fp32.accuracy,
        "int8_accuracy": r.int8.accuracy,
        "accuracy_drop_points": round((r.fp32.accuracy - r.int8.accuracy) * 100, 3),
        "int8_top1_agreement": r.int8_top1_agreement,
        "fp32_ort_p50_ms_1t": round(r.fp32.ort_latency_1t.p50_ms, 4),
        "int8_ort_p50_ms_1t": round(r.int8.ort_latency_1t.p50_ms, 4),
        "torch_p50_ms_1t": round(r.torch_latency_1t.p50_ms, 4),
        "int8_speedup_vs_fp32_ort_1t": round(
            r.fp32.ort_latency_1t.p50_ms / r.int8.ort_latency_1t.p50_ms, 3
        ),
        "int8_speedup_vs_torch_1t": round(
            r.torch_latency_1t.p50_ms / r.int8.ort_latency_1t.p50_ms, 3
        ),
        "int8_size_ratio": round(r.int8.size_bytes / r.fp32.size_bytes, 4),
        "target": r.environment["target"],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
