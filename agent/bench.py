"""``edgewise-agent bench``: the agent's frame path against a bare loop, on this board.

The bare loop does decode → preprocess → ``session.run`` in turn, nothing else. The agent path
is the daemon's: a capture thread, the frame slot, the inference thread with postprocessing,
result building and rate control — all but the network.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import ResultsConfig, RuntimeConfig, SourceConfig, VideoConfig
from agent.contract import MANIFEST_FILE, ContractError, Manifest, Package, read_package, to_tensor
from agent.errors import SourceError, UsageError
from agent.inference.backends import session_options
from agent.inference.onnxrt import ort
from agent.inference.pipeline import (
    CaptureWorker,
    FrameSlot,
    HealthStats,
    InferenceWorker,
    ModelSlot,
)
from agent.inference.runtime import Inference, ModelSession, blank_sample
from agent.inference.stats import StageStats
from agent.sources import Frame, make_source
from agent.upstream.results import RateFilter, ResultBuilder


def open_package(root: Path) -> Package:
    """A package folder, for a local measurement (its signature is not checked)."""
    if not root.is_dir():
        raise UsageError(f"--package {root}: no such folder (give a compiled package's folder)")
    if not (root / MANIFEST_FILE).is_file():
        raise UsageError(f"--package {root}: no {MANIFEST_FILE}, not a package folder")
    try:
        package = read_package(root)
    except ContractError as exc:
        raise UsageError(f"--package {root}: {MANIFEST_FILE} is not a package's: {exc}") from exc
    if not package.model_path.is_file():
        raise UsageError(f"--package {root}: its model {package.manifest.model.path} is missing")
    return package


def load_session(manifest: Manifest, model: Path, runtime: RuntimeConfig) -> ModelSession:
    try:
        return ModelSession(model, manifest, runtime)
    except Exception as exc:  # ORT's own errors, or a model its manifest does not describe
        raise UsageError(f"--package: the model does not load: {exc}") from exc


def check_fit(session: ModelSession, source: SourceConfig) -> None:
    """One frame through the model, so a wrong video or package fails here, in one line."""
    capture = make_source(source)
    try:
        capture.open()
        frame = capture.read(threading.Event())
    except SourceError as exc:
        raise UsageError(f"--source {source.uri}: cannot read it as a video ({exc})") from exc
    finally:
        capture.close()
    if frame is None:
        raise UsageError(f"--source {source.uri}: no frames in it")
    try:
        session.infer(frame.image)
    except Exception as exc:
        raise UsageError(f"the model does not take this video's frames: {exc}") from exc


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def plain_session(model: Path, runtime: RuntimeConfig) -> Any:
    """The model in a plain ONNX Runtime session, called as most code calls it: ``run(None,
    feeds)``, ORT allocating the outputs on every call."""
    return ort.InferenceSession(
        str(model), session_options(runtime), providers=["CPUExecutionProvider"]
    )


def per_call(
    session: ModelSession, model: Path, runtime: RuntimeConfig, runs: int = 3000
) -> dict[str, Any]:
    """The fixed cost of one call on this model: a plain ``session.run`` against the agent's
    runner (outputs preallocated and bound once, inputs bound in place), interleaved in rounds
    so the board's noise hits both alike."""
    tensor = to_tensor(blank_sample(session.manifest.preprocess), session.manifest.preprocess)
    feeds = {session.manifest.input.name: tensor.astype(session.manifest.input.dtype)}
    calls = {"plain": plain_session(model, runtime).run, "agent": session.runner.run}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(10):
        for name, call in calls.items():
            for _ in range(runs // 10):
                t0 = time.perf_counter()
                call(None, feeds)
                times[name].append(time.perf_counter() - t0)
    us = {name: round(float(np.percentile(v, 50)) * 1e6, 2) for name, v in times.items()}
    return {"backend": session.backend, "plain_us": us["plain"], "agent_us": us["agent"],
            "saved_us": round(us["plain"] - us["agent"], 2)}  # fmt: skip


def bare_loop(
    session: ModelSession, model: Path, runtime: RuntimeConfig, source: SourceConfig, frames: int
) -> dict[str, Any]:
    """Decode, preprocess and run, one after the other, with nothing around them."""
    capture = make_source(source)
    capture.open()
    stop = threading.Event()
    run = plain_session(model, runtime).run  # the bare loop calls ORT directly: its point
    name, spec = session.manifest.input.name, session.manifest.preprocess
    decode, prep, infer = [], [], []
    start = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        frame = capture.read(stop)
        if frame is None:
            break
        t1 = time.perf_counter()
        tensor = to_tensor(frame.image, spec)
        t2 = time.perf_counter()
        run(None, {name: tensor})
        t3 = time.perf_counter()
        decode.append(t1 - t0)
        prep.append(t2 - t1)
        infer.append(t3 - t2)
    elapsed = time.perf_counter() - start
    capture.close()
    return {
        "frames": len(infer),
        "fps": len(infer) / elapsed,
        "stages": {
            k: _ms(v) for k, v in (("decode", decode), ("preprocess", prep), ("inference", infer))
        },
    }


def agent_path(session: ModelSession, source: SourceConfig, frames: int) -> dict[str, Any]:
    """The daemon's threads, with results built and encoded but not sent."""
    stop = threading.Event()
    slot, models = FrameSlot(block=True), ModelSlot()
    models.swap(session)
    stages, builder, rate = (
        StageStats(keep=frames),
        ResultBuilder("bench", "0", source.uri),
        RateFilter(ResultsConfig()),
    )
    done = threading.Event()
    count = [0]

    def sink(frame: Frame, s: ModelSession, inference: Inference) -> None:
        if rate.admit(inference, time.monotonic()):
            builder.build(frame, s, inference)
        count[0] += 1
        if count[0] >= frames:
            stop.set()
            done.set()

    capture = CaptureWorker(make_source(source), slot, stop)
    worker = InferenceWorker(slot, models, sink, stop, HealthStats(), stages)
    start = time.perf_counter()
    capture.start()
    worker.start()
    done.wait(600)
    elapsed = time.perf_counter() - start
    stop.set()
    capture.join(5)
    worker.join(5)
    summary = stages.summary()
    overhead = summary["total"]["mean"] - summary["inference"]["mean"]
    return {
        "frames": count[0],
        "fps": count[0] / elapsed,
        "dropped": slot.dropped,
        "stages": summary,
        "overhead_ms_per_frame": round(overhead, 4),
    }


def _ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {
        "p50": round(float(np.percentile(values, 50)), 4),
        "p99": round(float(np.percentile(values, 99)), 4),
        "mean": round(float(values.mean()), 4),
    }


def run_bench(package: Path, source_uri: str, frames: int, threads: int) -> dict[str, Any]:
    opened = open_package(package)
    manifest, model = opened.manifest, opened.model_path
    source = VideoConfig(kind="video", uri=source_uri, loop=True, realtime=False)
    if not Path(source_uri).is_file():
        raise UsageError(f"--source {source_uri}: no such file (give a video file)")
    runtime = RuntimeConfig(intra_op_threads=threads, backend="onnxruntime")
    session = load_session(manifest, model, runtime)
    check_fit(session, source)
    bare = bare_loop(session, model, runtime, source, frames)
    agent = agent_path(session, source, frames)
    return {
        "model": f"{manifest.name} {manifest.version}",
        "frames": frames,
        "bare": bare,
        "agent": agent,
        "agent_vs_bare_throughput": round(agent["fps"] / bare["fps"], 3),
        "overhead_ms_per_frame": agent["overhead_ms_per_frame"],
        "per_call": per_call(session, model, runtime),
        "rss_mb": round(rss_mb(), 1),
        "torch_imported": "torch" in sys.modules,
    }


def print_table(report: dict[str, Any]) -> None:
    bare, agent = report["bare"], report["agent"]
    print(f"{report['model']}, {report['frames']} frames, batch 1")
    print(f"{'':<22}{'bare loop':>12}{'agent':>12}")
    print(f"{'frames/s':<22}{bare['fps']:>12.1f}{agent['fps']:>12.1f}")
    for stage in ("decode", "queue", "preprocess", "inference", "postprocess", "report", "total"):
        b = bare["stages"].get(stage)
        a = agent["stages"].get(stage)
        cell = lambda s: f"{s['p50']:.3f}/{s['p99']:.3f}" if s else "-"  # noqa: E731
        print(f"{stage + ' p50/p99 ms':<22}{cell(b):>12}{cell(a):>12}")
    print(f"{'dropped frames':<22}{'-':>12}{agent['dropped']:>12}")
    print(
        f"agent/bare throughput {report['agent_vs_bare_throughput']:.3f}×, overhead beyond "
        f"session.run {report['overhead_ms_per_frame']:.3f} ms/frame, RSS {report['rss_mb']} MB, "
        f"torch imported: {report['torch_imported']}"
    )
    call = report["per_call"]
    print(
        f"per call ({call['backend']}): plain session.run {call['plain_us']:.2f} µs, the agent's "
        f"bound runner {call['agent_us']:.2f} µs (saves {call['saved_us']:.2f} µs)"
    )
