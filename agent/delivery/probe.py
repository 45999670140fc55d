"""Candidate isolation: load and exercise a new model in a child process first.

A malformed model can crash or hang ONNX Runtime's loader, so the serving process never loads a
candidate before a child has: loaded it under a memory limit and a time limit, checked its input
against what the device will feed it, run the package's golden inputs, run a blank frame through
preprocess, model and postprocess as serving does (agent.delivery.probe_checks), and timed it on
this board. The child opens the model and checks the golden outputs with the serving process's
own functions (agent.inference.runtime.open_session, agent.inference.golden.check_golden). It
prints one JSON line; the parent turns every way it can fail into ProbeError.

    python -m agent.delivery.probe MODEL GOLDEN|- THREADS RUNS  < manifest.json
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

from agent.config import RuntimeConfig
from agent.contract import Manifest, clip
from agent.delivery.outcomes import Interrupted
from agent.errors import DeployError

MEMORY = "memory limit"
_POLL_S = 0.2  # how often a waiting parent looks at its stop event


class ProbeInterrupted(Interrupted):
    """The agent stopped while a probe ran: nothing is known about the candidate yet."""


class ProbeError(DeployError):
    """The candidate failed in the child: crashed, hung, ran out of memory or gave wrong answers."""


@dataclass(frozen=True)
class ProbeReport:
    latency_p50_ms: float
    latency_p99_ms: float
    peak_rss_mb: float
    load_ms: float


_REPORTED = ("latency_p50_ms", "latency_p99_ms", "peak_rss_mb", "load_ms")


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
    golden = str(golden_path) if golden_path else "-"
    child = ["-m", "agent.delivery.probe", str(model_path), golden]
    args = [sys.executable, *child, str(runtime.intra_op_threads), str(runs), *runtime.providers]
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
    return _read_answer(proc.returncode, out, err, memory_limit_mb)


def _read_answer(returncode: int, out: bytes, err: bytes, memory_limit_mb: int) -> ProbeReport:
    """The child's one JSON line (or its death) as a report or a ProbeError."""
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):  # a model's own output on stdout is not an answer
        answer = {}
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        raise ProbeError(f"candidate crashed the loader ({name})")
    if "error" in answer:
        if answer["error"] == MEMORY:
            raise ProbeError(f"candidate exceeded the {memory_limit_mb} MB memory limit")
        raise ProbeError(clip(answer["error"]))
    try:
        return ProbeReport(**{key: float(answer[key]) for key in _REPORTED})
    except (KeyError, TypeError, ValueError):
        pass
    text = err.decode(errors="replace")
    tail = text.strip().splitlines()[-1:] or ["no output"]
    if "MemoryError" in tail[0] or "bad_alloc" in text:
        raise ProbeError(f"candidate exceeded the {memory_limit_mb} MB memory limit")
    raise ProbeError(f"candidate crashed the loader (exit {returncode}): {clip(tail[0], 160)}")


def _run_child(argv: list[str]) -> dict[str, object]:
    import numpy as np

    from agent.delivery.probe_checks import Unfit, check_input, check_serving_path
    from agent.inference.golden import GoldenError, check_golden
    from agent.inference.runtime import open_session  # ORT with its telemetry off

    model, golden, threads, runs, *providers = argv
    manifest = Manifest.model_validate_json(sys.stdin.read())
    config = RuntimeConfig(
        intra_op_threads=int(threads), providers=tuple(providers) or ("CPUExecutionProvider",)
    )
    started = time.perf_counter()
    try:
        session = open_session(model, config)
    except Exception as exc:  # ORT's errors are untyped
        return {"error": f"not a loadable ONNX model: {_first_line(exc)}"}
    load_ms = (time.perf_counter() - started) * 1e3
    try:
        name = check_input(session, manifest)
        if golden != "-":
            check_golden(session, name, manifest, Path(golden))
        sample = check_serving_path(session, manifest, name)
        times = []
        for _ in range(int(runs)):
            t0 = time.perf_counter()
            session.run(None, {name: sample})
            times.append((time.perf_counter() - t0) * 1e3)
    except (Unfit, GoldenError) as exc:
        return {"error": str(exc)}
    except Exception as exc:  # ORT's errors are untyped
        if "allocat" in str(exc).lower():  # ORT's arena failing to allocate: out of memory
            return {"error": MEMORY}
        return {"error": f"candidate fails to run: {_first_line(exc)}"}
    return {
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p99_ms": float(np.percentile(times, 99)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_ms": load_ms,
    }


def _first_line(exc: BaseException) -> str:
    return clip((str(exc).strip().splitlines() or [type(exc).__name__])[0], 200)


if __name__ == "__main__":
    try:
        result = _run_child(sys.argv[1:])
    except MemoryError:
        result = {"error": MEMORY}
    print(json.dumps(result), flush=True)
    sys.exit(3 if "error" in result else 0)
