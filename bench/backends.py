"""What the agent serves against each backend alone, on the same file: the probe loads the
package on every installed backend (agent.inference.backends.installed), checks the golden
outputs, times each and picks one; the choice is written beside the package and load_package
serves it. Each backend is also opened alone (open_runner) and every arm timed through the same
``run(None, feeds)`` at batch 1, one thread, in interleaved rounds.

    .venv/bin/python bench/backends.py

Models: the digits CNN's int8 package (compiled as ``edgewise compile`` does) and MobileNetV2
(224×224×3, random weights) quantized to QDQ int8 by the compiler's quantizer on synthetic
calibration data. Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.config import RuntimeConfig
from agent.contract import ClassificationSpec, InputSpec, Package, PreprocessSpec
from agent.delivery.probe import ProbeReport, probe_candidate
from agent.inference.backends import CHOICE, installed, open_runner
from agent.inference.runtime import ModelSession, load_package
from compiler.compile.export import export_onnx, ort_session
from compiler.compile.measure import Latency, time_calls
from compiler.compile.package import write_package
from compiler.compile.quantize import detect_target, prepare, quantize

ROUNDS = 5
RUNS = 300
CONFIG = RuntimeConfig(intra_op_threads=1)


def quantize_file(fp32: Path, calibration: np.ndarray, out: Path) -> Path:
    """QDQ int8 with the compiler's quantizer (per-channel weights, min-max on ``calibration``)."""
    prepared = prepare(fp32, out.with_name(out.stem + "-prepared.onnx"))
    name = ort_session(prepared).get_inputs()[0].name
    return quantize(prepared, out, calibration, name, target=detect_target())


def package_file(
    model: Path, spec: PreprocessSpec, labels: int, x: np.ndarray, out_dir: Path, key: Path
) -> Package:
    """``model`` as a signed package with golden outputs from ONNX Runtime, as the compiler
    writes one (for a file that did not come through ``compile_model``)."""
    session = ort_session(model)
    port = session.get_inputs()[0]
    golden = out_dir / f"{model.stem}-golden.npz"
    np.savez(golden, inputs=x[:4], outputs=session.run(None, {port.name: x[:4]})[0])
    shape = tuple(d if isinstance(d, int) else None for d in port.shape)
    return write_package(
        out_dir, model, name=model.stem, version="1.0.0",
        input_spec=InputSpec(name=port.name, shape=shape), preprocess=spec,
        postprocess=ClassificationSpec(labels=tuple(str(i) for i in range(labels))),
        metrics={}, signing_key=key, golden=golden,
    )  # fmt: skip


@dataclass
class Served:
    probe: ProbeReport
    session: ModelSession

    @property
    def backend(self) -> str:
        return self.session.backend


def serve(package: Package) -> Served:
    """As the agent installs a package: probe it (every installed backend), keep the choice
    beside it, then load it to serve."""
    probe = probe_candidate(
        package.model_path, package.manifest, package.golden_path, CONFIG,
        runs=50, timeout_s=300, memory_limit_mb=8192,
    )  # fmt: skip
    choice = {"backend": probe.backend, "backends": probe.backends}
    (package.root / CHOICE).write_text(json.dumps(choice))
    return Served(probe, load_package(package, CONFIG))


def median(runs: list[Latency]) -> Latency:
    return Latency(
        float(np.median([r.p50_ms for r in runs])), float(np.median([r.p99_ms for r in runs]))
    )


def compare(package: Package, sample: np.ndarray) -> tuple[Served, dict[str, Latency]]:
    """Each installed backend alone and the agent's served session, on the package's file."""
    served = serve(package)
    feeds = {served.session.runner.get_inputs()[0].name: np.ascontiguousarray(sample[:1])}
    arms = {name: open_runner(package.model_path, CONFIG, name) for name in installed()}
    arms[f"served ({served.backend})"] = served.session.runner
    runs: dict[str, list[Latency]] = {name: [] for name in arms}
    for _ in range(ROUNDS):
        for name, runner in arms.items():
            runs[name].append(time_calls(lambda r=runner: r.run(None, feeds), RUNS))
    return served, {name: median(rs) for name, rs in runs.items()}


def served_vs_fastest(latency: dict[str, Latency]) -> float:
    served = next(v.p50_ms for k, v in latency.items() if k.startswith("served"))
    fastest = min(v.p50_ms for k, v in latency.items() if not k.startswith("served"))
    return round(served / fastest, 3)


def fastest_alone(latency: dict[str, Latency]) -> str:
    alone = {k: v.p50_ms for k, v in latency.items() if not k.startswith("served")}
    return min(alone, key=lambda k: alone[k])


def digits_package(root: Path, key: Path) -> tuple[Package, np.ndarray]:
    from agent.contract import preprocess_batch
    from compiler.compile.loading import SourceModel
    from compiler.compile.pipeline import CompileOptions, compile_model
    from compiler.recipe.demo_model import train_demo_model
    from compiler.recipe.digits import PREPROCESS, load_dataset

    dataset = load_dataset("digits", seed=0)
    model = train_demo_model(dataset.train, PREPROCESS)
    options = CompileOptions(
        name="digits-cnn", version="1.0.0", signing_key=key, out_dir=root / "digits",
        progress=False, html=False,
    )  # fmt: skip
    result = compile_model(SourceModel("eager", model), dataset, PREPROCESS, options)
    return result.package, preprocess_batch(dataset.test.images[:2], PREPROCESS)


def mbv2_qdq(root: Path, size: int = 224, calibration: int = 64) -> tuple[Path, np.ndarray]:
    """MobileNetV2 (random weights, seed 0) at ``size``, exported and quantized to QDQ int8
    on synthetic calibration inputs; returns the QDQ file and a synthetic sample."""
    from mobilenet import MobileNetV2

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((calibration, 3, size, size)).astype(np.float32)
    fp32 = export_onnx(MobileNetV2().eval(), x[:2], root / f"mbv2-{size}-fp32.onnx")
    return quantize_file(fp32, x, root / f"mbv2-{size}-int8.onnx"), x[:2]


def table(model: str, served: Served, latency: dict[str, Latency]) -> None:
    fastest = min(v.p50_ms for k, v in latency.items() if not k.startswith("served"))
    print(f"\n{model}: the agent serves on {served.backend} (probe p50 per backend: "
          + ", ".join(f"{k} {v.get('p50_ms', v.get('skipped'))}"
                      for k, v in served.probe.backends.items()) + ")")  # fmt: skip
    print(f"{'arm':<26}{'p50 ms':>9}{'p99 ms':>9}{'vs fastest':>12}")
    for name, lat in latency.items():
        print(f"{name:<26}{lat.p50_ms:>9.3f}{lat.p99_ms:>9.3f}{lat.p50_ms / fastest:>11.3f}×")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    from agent.contract import generate_keypair
    from compiler.recipe.digits import upscaled_preprocess

    figures: dict[str, object] = {"backends": installed()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_keypair(root / "k", root / "k.pub")
        packages = {"digits-cnn int8": digits_package(root, root / "k")}
        qdq, sample = mbv2_qdq(root)
        spec = upscaled_preprocess(224)
        packages["mbv2-224 int8"] = (
            package_file(qdq, spec, 1000, sample, root, root / "k"),
            sample,
        )
        for model, (package, x) in packages.items():
            served, latency = compare(package, x)
            table(model, served, latency)
            figures[model] = {
                "served_backend": served.backend,
                "served_vs_fastest": served_vs_fastest(latency),
                # the probe's 50 runs picked the backend that is fastest over 5×300 runs
                "probe_chose_fastest": served.backend == fastest_alone(latency),
                "p50_ms": {k: round(v.p50_ms, 4) for k, v in latency.items()},
                "probe_p50_ms": {k: v.get("p50_ms") for k, v in served.probe.backends.items()},
            }
    print("(batch 1, one thread; each arm through run(None, feeds), median of 5 rounds)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
