"""Compile benchmark on the recipe CNN trained on digits: torch eager, ORT fp32, ORT int8, and
50% channel pruning + recovery + int8, measured side by side in one run (batch 1, one thread).

    .venv/bin/python bench/compile.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from agent.contract import generate_keypair, preprocess_batch
from compiler.compile.export import export_onnx
from compiler.compile.loading import SourceModel
from compiler.compile.measure import Latency, ort_latency, torch_latency
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset

ROUNDS = 5  # interleave the candidates so machine noise hits them alike


def interleaved(candidates: dict[str, object], sample: np.ndarray) -> dict[str, Latency]:
    runs: dict[str, list[Latency]] = {name: [] for name in candidates}
    for _ in range(ROUNDS):
        for name, model in candidates.items():
            if isinstance(model, Path):
                runs[name].append(ort_latency(model, sample, threads=1, runs=300))
            else:
                runs[name].append(torch_latency(model, sample))  # type: ignore[arg-type]
    return {
        name: Latency(
            float(np.median([r.p50_ms for r in rs])), float(np.median([r.p99_ms for r in rs]))
        )
        for name, rs in runs.items()
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    dataset = load_dataset("digits", seed=0)
    model = train_demo_model(dataset.train, PREPROCESS, progress=False)
    x = preprocess_batch(dataset.test.images[:2], PREPROCESS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_keypair(root / "k", root / "k.pub")

        def build(version: str, **kwargs: object) -> dict:
            options = CompileOptions(
                name="digits-cnn", version=version, signing_key=root / "k", out_dir=root,
                progress=False, html=False, **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
            result = compile_model(SourceModel("eager", model), dataset, PREPROCESS, options)
            return {"report": result.report, "model": result.package.model_path}

        plain = build("1.0.0")
        pruned = build("1.0.1", prune_ratio=0.5, recovery_epochs=3)
        fp32_path = export_onnx(model, x, root / "fp32.onnx")
        latency = interleaved(
            {
                "torch eager fp32": model,
                "ORT fp32": fp32_path,
                "ORT int8": plain["model"],
                "ORT pruned 50% int8": pruned["model"],
            },
            x,
        )
        sizes = {
            "ORT fp32": fp32_path.stat().st_size,
            "ORT int8": plain["model"].stat().st_size,
            "ORT pruned 50% int8": pruned["model"].stat().st_size,
        }
    fp32_acc = plain["report"]["stages"]["fp32"]["accuracy"]
    accuracy = {
        "torch eager fp32": fp32_acc,
        "ORT fp32": fp32_acc,
        "ORT int8": plain["report"]["stages"]["int8"]["accuracy"],
        "ORT pruned 50% int8": pruned["report"]["stages"]["int8"]["accuracy"],
    }
    base = latency["ORT fp32"].p50_ms
    print(f"{'model':<22}{'top-1':>8}{'bytes':>12}{'p50 ms':>9}{'p99 ms':>9}{'vs fp32':>9}")
    for name, lat in latency.items():
        size = f"{sizes[name]:,}" if name in sizes else "-"
        print(
            f"{name:<22}{accuracy[name]:>8.4f}{size:>12}{lat.p50_ms:>9.3f}{lat.p99_ms:>9.3f}"
            f"{base / lat.p50_ms:>8.2f}×"
        )
    print("(ONNX Runtime and torch, batch 1, one thread; median of 5 interleaved rounds)")
    figures = {
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": accuracy["ORT int8"],
        "pruned_int8_accuracy": accuracy["ORT pruned 50% int8"],
        "int8_accuracy_drop_pt": round((fp32_acc - accuracy["ORT int8"]) * 100, 3),
        "pruned_int8_accuracy_drop_pt": round(
            (fp32_acc - accuracy["ORT pruned 50% int8"]) * 100, 3
        ),
        "fp32_p50_ms": round(base, 4),
        "torch_p50_ms": round(latency["torch eager fp32"].p50_ms, 4),
        "int8_p50_ms": round(latency["ORT int8"].p50_ms, 4),
        "pruned_int8_p50_ms": round(latency["ORT pruned 50% int8"].p50_ms, 4),
        "int8_speedup_vs_fp32": round(base / latency["ORT int8"].p50_ms, 3),
        "pruned_int8_speedup_vs_fp32": round(base / latency["ORT pruned 50% int8"].p50_ms, 3),
        "pruned_int8_speedup_vs_torch": round(
            latency["torch eager fp32"].p50_ms / latency["ORT pruned 50% int8"].p50_ms, 3
        ),
        "torch_slowdown_vs_fp32": round(latency["torch eager fp32"].p50_ms / base, 3),
        "int8_size_ratio": round(sizes["ORT int8"] / sizes["ORT fp32"], 4),
        "pruned_int8_size_ratio": round(sizes["ORT pruned 50% int8"] / sizes["ORT fp32"], 4),
        "target": plain["report"]["environment"]["target"],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
