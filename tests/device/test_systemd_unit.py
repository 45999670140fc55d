"""The shipped unit: what it promises, and `systemd-analyze verify` accepting it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import BIN

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edgewise-agent.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_supervises_and_hardens() -> None:
    unit = directives()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] and unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["78"]
    assert "video" in unit["SupplementaryGroups"][0].split()
    for flag in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[flag] == ["true"], flag
    assert unit["ProtectSystem"] == ["strict"] and unit["StateDirectory"] == ["edgewise"]
    assert "char-video4linux rw" in unit["DeviceAllow"] and unit["DevicePolicy"] == ["closed"]
    assert any(c.startswith("mqtt-tls-key:") for c in unit["LoadCredential"])
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (.ci/run installs it)")
    # verify checks that ExecStart exists: point it at this checkout's agent.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace(
            "/opt/edgewise/venv/bin/edgewise-agent", str(BIN / "edgewise-agent")
        )
    )
    run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    complaints = [line for line in run.stderr.splitlines() if UNIT.name in line]
    assert not complaints, complaints


def test_systemd_analyze_security_rates_the_unit_at_most_2_5() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (.ci/run installs it)")
    unit = directives()
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    assert unit["ProtectProc"] == ["invisible"] and unit["RemoveIPC"] == ["true"]
    # Cameras, serial ports, JIT kernels, /proc/cpuinfo: see the unit's comments.
    left_off = ("PrivateDevices", "PrivateUsers", "MemoryDenyWriteExecute", "PrivateNetwork")
    for absent in (*left_off, "ProcSubset"):
        assert absent not in unit, absent
    # --offline (systemd 252+) rates the file itself; --threshold is on the 0-100 scale.
    run = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", run.stdout)
    assert found, run.stdout[-2000:] + run.stderr
    assert float(found.group(1)) <= 2.5 and run.returncode == 0, found.group(0)
