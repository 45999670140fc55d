"""The cloud daemon's unit: the console's users arrive as a systemd credential,
`systemd-analyze verify` accepts the unit, `systemd-analyze security` rates it at most 2.5, and
`edgewise serve` works under its system-call filter."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN
from systemd_units import directives as unit_directives
from systemd_units import exposure
from test_serve import blob, chunk_of, device  # noqa: F401 (fixtures used below)

from agent.contract import ChunkRequest
from compiler.cli.console import CREDENTIAL

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edgewise-serve.service"


def directives() -> dict[str, list[str]]:
    return unit_directives(UNIT)


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


def test_systemd_analyze_security_rates_the_unit_at_most_2_5() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, ".ci/run installs systemd (systemd-analyze)"
    unit = directives()
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["ProtectProc"] == ["invisible"] and unit["ProcSubset"] == ["pid"]
    level, run = exposure(analyze, UNIT)
    assert level is not None, run.stdout[-2000:] + run.stderr
    assert level <= 2.5 and run.returncode == 0, f"exposure {level}"


def test_serve_answers_under_the_units_system_call_filter(  # type: ignore[no-untyped-def]
    mosquitto, request: pytest.FixtureRequest
) -> None:
    """As tests/test_serve.py runs it, under the unit's filter loaded through libseccomp
    (tests/syscall_filter.py): it serves a chunk and stops cleanly, and nothing is refused."""
    raw, stored = request.getfixturevalue("device"), request.getfixturevalue("blob")
    launcher = Path(__file__).with_name("syscall_filter.py")
    proc = subprocess.Popen(
        [sys.executable, str(launcher), str(UNIT), str(BIN / "edgewise"), "serve",
         "--blobs", str(stored[0]), "--host", mosquitto.host, "--port", str(mosquitto.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    started = proc.stdout.readline()
    assert started.startswith(f"serving 1 blobs from {stored[0]} on "), started
    raw.ask(ChunkRequest(sha256=stored[1], chunks=(2,)).encode())
    assert raw.wait_for(1)[0].payload == chunk_of(stored[0], stored[1], 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "setgroups: EPERM" in err  # the filter was in force
    for refused in ("Operation not permitted", "PermissionError", "Traceback"):
        assert refused not in err, err
