"""The cloud daemon's unit: the console's users arrive as a systemd credential, and
`systemd-analyze verify` accepts the unit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from helpers import BIN

from compiler.cli.console import CREDENTIAL

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edgewise-serve.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_hands_the_console_its_users_as_a_credential() -> None:
    unit = directives()
    assert any(c.startswith(f"{CREDENTIAL}:") for c in unit["LoadCredential"])
    start = unit["ExecStart"][0]
    assert "--console 127.0.0.1:" in start and "--users" not in start
    assert unit["RestartPreventExitStatus"] == ["2"] and unit["ProtectSystem"] == ["strict"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, ".ci/run installs systemd (systemd-analyze)"
    # verify checks that ExecStart exists: point it at this checkout's edgewise.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace("/opt/edgewise/venv/bin/edgewise", str(BIN / "edgewise"))
    )
    run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    complaints = [line for line in run.stderr.splitlines() if UNIT.name in line]
    assert not complaints, complaints
