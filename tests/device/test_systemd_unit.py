"""The shipped unit: what it promises, and `systemd-analyze verify` accepting it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import BIN
from systemd_units import directives as unit_directives
from systemd_units import exposure

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edgewise-agent.service"


def directives() -> dict[str, list[str]]:
    return unit_directives(UNIT)


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
    level, run = exposure(analyze, UNIT)
    assert level is not None, run.stdout[-2000:] + run.stderr
    assert level <= 2.5 and run.returncode == 0, f"exposure {level}"
