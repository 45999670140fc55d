"""What a valid config still needs from this machine, checked before anything starts.

``startup_problems``: what ``run`` would fail on at start — the optional packages the config asks
for, the port it must listen on, the voice gate's package, a fixed backend this board lacks;
``run`` and ``check-config`` both refuse them (exit 78).
``source_problems``: whether the source is there now — a video or folder, a capture program.
Only ``check-config`` refuses those: ``run`` starts anyway and reports the source as failed until
it appears (a camera plugged in later, a mount that comes up after the agent).
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from agent.config import AgentConfig, SourceConfig
from agent.delivery.voicegate import gate_problems
from agent.errors import SourceError

PROBE_TIMEOUT_S = 2.0


def startup_problems(config: AgentConfig) -> list[str]:
    """One ``key: what is wrong and what to do`` per problem; empty when ``run`` can start."""
    problems = [
        f"{key}: needs {package}, which does not import ({error}): {fix}"
        for key, module, package, fix in _needed_packages(config)
        if (error := _import_error(module))
    ]
    if config.source.kind == "picamera":
        from agent.sources.picamera import import_picamera2

        try:
            import_picamera2()
        except SourceError as exc:
            problems.append(f"source.kind: {exc}")
    problems += gate_problems(config)
    problems += backend_problems(config.runtime.backend)
    port = config.telemetry.prometheus_port
    if port and not problems:
        problem = _port_problem(port, config.device.id)
        if problem:
            problems.append(problem)
    return problems


def backend_problems(backend: str) -> list[str]:
    """A fixed ``[runtime] backend`` that this board lacks: say what it needs and what is here."""
    from agent.inference.backends import BACKENDS, installed  # ONNX Runtime: only when asked

    if backend == "auto" or BACKENDS[backend].present():
        return []
    return [
        f"runtime.backend: {backend} is not installed here (needs {BACKENDS[backend].needs}); "
        f'installed: {", ".join(installed())}; or set backend = "auto"'
    ]


def _needed_packages(config: AgentConfig) -> Iterator[tuple[str, str, str, str]]:
    """(key, module, package, how to install) for each optional package the config uses."""
    if config.telemetry.prometheus_port:
        yield (
            "telemetry.prometheus_port",
            "prometheus_client",
            "prometheus-client",
            "pip install 'edgewise[prometheus]' in the agent's venv, or remove the key",
        )
    source = config.source
    if source.kind == "sensor" and source.uri.startswith("serial:"):
        yield (
            "source.uri",
            "serial",
            "pyserial",
            "pip install 'edgewise[serial]' in the agent's venv",
        )


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install fails in many ways; each means "not usable"
        return f"{type(exc).__name__}: {exc}"
    return None


def _port_problem(port: int, device: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the exporter's HTTP server does: a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
            return None
        except OSError as exc:
            error = exc
    if error.errno == errno.EADDRINUSE and _serves_device(port, device):
        return None  # this device's own agent, running: check-config beside it is fine
    return (
        f"telemetry.prometheus_port: cannot listen on port {port}: {error.strerror}: pick "
        "another port, or stop what holds it (ss -ltnp shows it)"
    )


def _serves_device(port: int, device: str) -> bool:
    """Whether the port serves this device's agent metrics (the agent is already running)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=PROBE_TIMEOUT_S
        ) as reply:
            text = reply.read(1 << 20).decode(errors="replace")
    except Exception:  # anything else on that port, or nothing answering in time
        return False
    # edgewise_build_info is served, with the device, from the moment the endpoint starts.
    return f'edgewise_build_info{{device="{device}",' in text


def source_problems(config: AgentConfig) -> list[str]:
    """Whether the configured source can be opened now (files, folders, programs)."""
    source = config.source
    problem = _source_problem(source)
    return [problem] if problem else []


def _source_problem(source: SourceConfig) -> str | None:
    if source.kind == "video":
        return _readable(Path(source.uri), want_dir=False)
    if source.kind == "images":
        return _readable(Path(source.uri), want_dir=True)
    if source.kind == "sensor" and source.uri != "-" and ":" not in source.uri:
        path = Path(source.uri)
        return None if path.exists() else f"source.uri: {path} does not exist"
    if source.kind == "command":
        return _program_problem(source.command[0])
    return None


def _readable(path: Path, want_dir: bool) -> str | None:
    what = "folder" if want_dir else "file"
    if not path.exists():
        return f"source.uri: {path} does not exist"
    if path.is_dir() != want_dir:
        return f"source.uri: {path} is not a {what}"
    if not os.access(path, os.R_OK | (os.X_OK if want_dir else 0)):
        return f"source.uri: {path} is not readable by this user"
    return None


def _program_problem(program: str) -> str | None:
    if "/" not in program:
        if shutil.which(program) is None:
            return (
                f"source.command: {program!r} is not on PATH ({os.environ.get('PATH', '')}): "
                "install it or give its full path"
            )
        return None
    path = Path(program)
    if not path.is_file():
        return f"source.command: {path} does not exist"
    if not os.access(path, os.X_OK):
        return f"source.command: {path} is not executable (chmod +x)"
    return None
