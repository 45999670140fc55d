"""The agent under the shipped unit's system-call filter (``SystemCallFilter=``, errno EPERM),
applied through libseccomp as systemd applies it (tests/syscall_filter.py): it takes a push, loads
the model in ONNX Runtime, serves results and stops cleanly, and nothing it calls is refused."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from device_harness import DEVICE, TOPICS
from helpers import BIN
from test_hardening_deploy import start, stop

from compiler.fleet.push import push_package

UNITS = Path(__file__).resolve().parents[1] / "systemd"


def test_the_agent_serves_under_the_units_system_call_filter(  # type: ignore[no-untyped-def]
    mosquitto, cloud, compiled, signing_keys, video, tmp_path: Path
) -> None:
    assert shutil.which("systemd-analyze"), ".ci/run installs systemd (systemd-analyze)"
    launcher = Path(__file__).with_name("syscall_filter.py")
    unit = UNITS / "edgewise-agent.service"
    prelude = [sys.executable, str(launcher), str(unit), str(BIN / "edgewise-agent")]
    device = start(mosquitto, cloud, signing_keys, video, tmp_path, prelude=prelude)
    try:
        push_package(cloud, TOPICS, compiled.package, f"device:{DEVICE}")
        device.deployment("active", timeout=60)
        assert device.serving() == {"1.0.0"}
    finally:
        output = stop(device)
    assert "setgroups: EPERM" in output, output[:2000]  # the filter was in force
    for refused in ("Operation not permitted", "PermissionError", "setaffinity"):
        assert refused not in output, output[-3000:]
