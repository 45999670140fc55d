"""Candidate isolation: load and exercise a new model in a child process first.

A malformed model can crash or hang ONNX Runtime's loader, so the serving process never loads a
candidate before a child has: loaded it under a memory limit and a time limit, checked its input
against what the device will feed it, run the package's golden inputs, and timed it on this
board. The child prints one JSON line; the parent turns every way it can fail into ProbeError.

    python -m agent.probe MODEL GOLDEN|- THREADS RUNS  < manifest.json
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .config import RuntimeConfig
from .contract import Manifest
from .errors import AgentError, DeployError

MEMORY = "memory limit"
_POLL_S = 0.2  # how often a waiting parent looks at its stop event


class ProbeInterrupted(AgentError):
    """The agent stopped while a probe ran: nothing is known about the candidate yet."""


class ProbeError(DeployError):
    """The candidate failed in the child: crashed, hung, ran out of memory or gave wrong answers."""


@dataclass(frozen=True)
class ProbeReport:
    latency_p50_ms: float
    latency_p99_ms: float
    peak_rss_mb: float
    load_ms: float


def _limit_memory(limit_mb: int) -> None:
    # RLIMIT_DATA (heap and anonymous mappings) rather than RLIMIT_AS: onnxruntime and numpy
    # reserve gigabytes of address space they never touch, which RLIMIT_AS would count.
    limit = limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def probe_candidate(
    model_path: Path,
    manifest: Manifest,
    golden_path: Path | None,
    runtime: RuntimeConfig,
    *,
    timeout_s: float = 30.0,
    memory_limit_mb: int = 1024,
    runs: int = 50,
    stop: threading.Event | None = None,
) -> ProbeReport:
    """Raises ProbeError naming the failure; never crashes or hangs the caller. When ``stop`` is
    set the child is killed and ProbeInterrupted raised: the candidate is not at fault."""
    args = [
        sys.executable, "-m", "agent.probe", str(model_path),
        str(golden_path) if golden_path else "-", str(runtime.intra_op_threads), str(runs),
        *runtime.providers,
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: _limit_memory(memory_limit_mb),
    )
    request: bytes | None = manifest.model_dump_json().encode()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            out, err = proc.communicate(request, timeout=_POLL_S)
            break
        except subprocess.TimeoutExpired:
            request = None  # sent with the first call; a retry must not send it again
            stopping = stop is not None and stop.is_set()
            if not stopping and time.monotonic() < deadline:
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if stopping:
                raise ProbeInterrupted("the agent is stopping; the probe was abandoned") from None
            raise ProbeError(f"candidate hung the loader: no answer in {timeout_s:.0f} s") from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ProbeError(f"candidate crashed the loader ({name})")
    if "error" in answer:
        if answer["error"] == MEMORY:
            raise ProbeError(f"candidate exceeded the {memory_limit_mb} MB memory limit")
        raise ProbeError(answer["error"])
    if proc.returncode != 0 or "latency_p50_ms" not in answer:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        if "MemoryError" in tail[0] or "bad_alloc" in err.decode(errors="replace"):
            raise ProbeError(f"candidate exceeded the {memory_limit_mb} MB memory limit")
        raise ProbeError(f"candidate crashed the loader (exit {proc.returncode}): {tail[0]}")
    return ProbeReport(**answer)


def _fits(declared: list[object], wanted: list[int | None]) -> bool:
    if len(declared) != len(wanted):
        return False
    return all(
        not isinstance(d, int) or w is None or d == w for d, w in zip(declared, wanted, strict=True)
    )


def _run_child(argv: list[str]) -> dict[str, object]:
    import numpy as np
    import onnxruntime as ort

    from .runtime import session_options

    model, golden, threads, runs, *providers = argv
    manifest = Manifest.model_validate_json(sys.stdin.read())
    config = RuntimeConfig(
        intra_op_threads=int(threads), providers=tuple(providers) or ("CPUExecutionProvider",)
    )
    available = set(ort.get_available_providers())
    wanted = [p for p in config.providers if p in available] or ["CPUExecutionProvider"]
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(model, session_options(config), providers=wanted)
    except Exception as exc:  # ORT's errors are untyped
        return {"error": f"not a loadable ONNX model: {str(exc).strip().splitlines()[0][:300]}"}
    load_ms = (time.perf_counter() - started) * 1e3
    inputs = session.get_inputs()
    source = manifest.preprocess.input_shape(1)
    element = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}[manifest.preprocess.dtype]
    if len(inputs) != 1 or inputs[0].name != manifest.input.name:
        names = [i.name for i in inputs]
        return {
            "error": f"model inputs {names} do not match the manifest's {manifest.input.name!r}"
        }
    if not _fits(list(inputs[0].shape), source) or inputs[0].type != element:
        return {
            "error": f"model input {inputs[0].name!r} {inputs[0].type} {inputs[0].shape} does not "
            f"fit the source tensor {element} {source}"
        }
    name = inputs[0].name
    try:
        if golden != "-":
            with np.load(golden, allow_pickle=False) as data:
                x, expected = data["inputs"], data["outputs"]
            got = session.run(None, {name: x})[0]
            if got.shape != expected.shape or not np.allclose(
                got, expected, atol=manifest.golden_atol, rtol=0
            ):
                diff = (
                    float(np.abs(got - expected).max()) if got.shape == expected.shape else "shape"
                )
                return {
                    "error": f"golden outputs differ from the package's: max |diff| {diff} > atol "
                    f"{manifest.golden_atol}"
                }
            sample = x[:1]
        else:
            sample = np.zeros([d or 1 for d in source], np.dtype(manifest.preprocess.dtype))
        times = []
        for _ in range(int(runs)):
            t0 = time.perf_counter()
            session.run(None, {name: sample})
            times.append((time.perf_counter() - t0) * 1e3)
    except Exception as exc:  # ORT's errors are untyped
        text = str(exc).strip().splitlines()[0][:300]
        return {"error": MEMORY if "allocat" in text.lower() else f"candidate fails to run: {text}"}
    return {
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p99_ms": float(np.percentile(times, 99)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_ms": load_ms,
    }


if __name__ == "__main__":
    try:
        result = _run_child(sys.argv[1:])
    except MemoryError:
        result = {"error": MEMORY}
    print(json.dumps(result), flush=True)
    sys.exit(3 if "error" in result else 0)
