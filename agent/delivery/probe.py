"""Candidate isolation: load and exercise a new model in a child process first.

A malformed model can crash or hang ONNX Runtime's loader, so the serving process never loads a
candidate before a child has: loaded it under a memory limit and a time limit, checked its input
against what the device will feed it, run the package's golden inputs, run a blank frame through
preprocess, model and postprocess as serving does (agent.delivery.probe_checks), and timed it on
this board. The child opens the model and checks the golden outputs with the serving process's
own functions (agent.inference.runtime.open_session, agent.inference.golden.check_golden). It
prints one JSON line; the parent turns every way it can fail into ProbeError.

With ``[runtime] backend = "auto"`` the child does all of it on each backend installed here
(agent.inference.backends) and names the fastest that passed, with every backend's figures or
the reason it was skipped.

    python -m agent.delivery.probe MODEL GOLDEN|- RUNS RUNTIME_JSON BACKEND[,BACKEND…] < manifest
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import RuntimeConfig
from agent.contract import Manifest, clip
from agent.delivery.outcomes import Interrupted
from agent.errors import DeployError
from agent.inference.backends import DEFAULT, candidates

MEMORY = "memory limit"
_POLL_S = 0.2  # how often a waiting parent looks at its stop event
ROUNDS = 5  # the timed runs of every backend, interleaved in this many rounds
MARGIN = 0.1  # how much faster than the default another backend must be to serve instead


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
    backend: str = DEFAULT  # the one that serves: the fastest whose outputs matched
    # every backend tried: {"p50_ms", "p99_ms", "load_ms"}, or {"skipped": why}
    backends: dict[str, dict[str, object]] = field(default_factory=dict)


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
    child = ["-m", "agent.delivery.probe", str(model_path), golden, str(runs)]
    args = [sys.executable, *child, runtime.model_dump_json(), ",".join(candidates(runtime))]
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
        figures = {key: float(answer[key]) for key in _REPORTED}
        return ProbeReport(**figures, backend=str(answer["backend"]), backends=answer["backends"])
    except (KeyError, TypeError, ValueError):
        pass
    text = err.decode(errors="replace")
    tail = text.strip().splitlines()[-1:] or ["no output"]
    if "MemoryError" in tail[0] or "bad_alloc" in text:
        raise ProbeError(f"candidate exceeded the {memory_limit_mb} MB memory limit")
    raise ProbeError(f"candidate crashed the loader (exit {returncode}): {clip(tail[0], 160)}")


def _run_child(argv: list[str]) -> dict[str, object]:
    """Each candidate backend loaded and checked, the fit ones timed in interleaved rounds; the
    candidate is unfit when none runs it right, and the answer is then the first backend's
    reason (the default's, when it was tried)."""
    model, golden, runs, runtime, names = argv
    manifest = Manifest.model_validate_json(sys.stdin.read())
    config = RuntimeConfig.model_validate_json(runtime)
    tried: dict[str, dict[str, object]] = {}
    ready: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name in names.split(","):
        outcome = _ready(model, golden, manifest, config, name)
        if isinstance(outcome, str):
            tried[name] = {"error": outcome}
        else:
            ready[name], tried[name] = outcome[:2], {"load_ms": outcome[2]}
    for name, figures in _timed(ready, int(runs)).items():
        tried[name] = figures if "error" in figures else {**figures, **tried[name]}
    fit = {name: t for name, t in tried.items() if "error" not in t}
    if not fit:
        return {"error": next(iter(tried.values()))["error"]}
    chosen = pick_backend({name: float(t["p50_ms"]) for name, t in fit.items()})  # type: ignore[arg-type]
    return {
        "latency_p50_ms": fit[chosen]["p50_ms"],
        "latency_p99_ms": fit[chosen]["p99_ms"],
        "load_ms": fit[chosen]["load_ms"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backend": chosen,
        "backends": {
            name: ({"skipped": t["error"]} if "error" in t else t) for name, t in tried.items()
        },
    }


def pick_backend(p50_ms: dict[str, float]) -> str:
    """The fastest at p50, except that the default keeps serving unless another is at least
    ``MARGIN`` faster: a shared, noisy board must not flip backends on a few percent."""
    fastest = min(p50_ms, key=lambda name: p50_ms[name])
    if DEFAULT in p50_ms and p50_ms[fastest] > p50_ms[DEFAULT] * (1 - MARGIN):
        return DEFAULT
    return fastest


def _ready(
    model: str, golden: str, manifest: Manifest, config: RuntimeConfig, backend: str
) -> tuple[Any, dict[str, Any], float] | str:
    """One backend: load and the checks; (runner, feeds, load ms), or why it is unfit."""
    from agent.delivery.probe_checks import Unfit, check_input, check_serving_path
    from agent.inference.golden import GoldenError, check_golden
    from agent.inference.runtime import open_session  # ORT with its telemetry off

    started = time.perf_counter()
    try:
        session = open_session(model, config, backend)
    except Exception as exc:  # every backend's errors are its own, untyped
        return f"not a loadable ONNX model: {_first_line(exc)}"
    load_ms = round((time.perf_counter() - started) * 1e3, 1)
    try:
        check_input(session, manifest)
        if golden != "-":
            check_golden(session, manifest, Path(golden))
        return session, check_serving_path(session, manifest), load_ms
    except (Unfit, GoldenError) as exc:
        return str(exc)
    except Exception as exc:  # ORT's errors are untyped
        return _run_error(exc)


def _timed(ready: dict[str, tuple[Any, dict[str, Any]]], runs: int) -> dict[str, dict[str, object]]:
    """``runs`` timed runs of each backend in ``ROUNDS`` interleaved rounds, so a busy board's
    noise falls on all of them alike: p50 and p99 (ms), or the error a run raised."""
    import numpy as np

    times: dict[str, list[float]] = {name: [] for name in ready}
    failed: dict[str, dict[str, object]] = {}
    for _ in range(ROUNDS):
        for name, (session, feeds) in ready.items():
            if name in failed:
                continue
            try:
                for _ in range(max(1, runs // ROUNDS)):
                    t0 = time.perf_counter()
                    session.run(None, feeds)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:  # ORT's errors are untyped
                failed[name] = {"error": _run_error(exc)}
    return {
        name: failed.get(name)
        or {
            "p50_ms": round(float(np.percentile(t, 50)), 4),
            "p99_ms": round(float(np.percentile(t, 99)), 4),
        }
        for name, t in times.items()
    }


def _run_error(exc: BaseException) -> str:
    if "allocat" in str(exc).lower():  # ORT's arena failing to allocate: out of memory
        return MEMORY
    return f"candidate fails to run: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    """The first line of an error; OpenVINO's begin with where in its C++ the check failed, so
    for those the lines after the wrappers, joined (they name what is unsupported)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Exception from "):
        # its summary, when it has one, is what it could not convert
        summary = lines[lines.index("Summary:") + 1 :] if "Summary:" in lines else []
        told = summary or [line for line in lines if not line.startswith(("Exception", "Check"))]
        lines = [" ".join(line.removeprefix("-- ") for line in told)] if told else lines
    return clip((lines or [type(exc).__name__])[0], 200)


if __name__ == "__main__":
    try:
        result = _run_child(sys.argv[1:])
    except MemoryError:
        result = {"error": MEMORY}
    print(json.dumps(result), flush=True)
    sys.exit(3 if "error" in result else 0)
