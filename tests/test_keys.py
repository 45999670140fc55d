"""`edgewise keygen` and `edgewise certs` on the command line: private keys 0600, never printed,
never silently replaced."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import BIN


def edgewise(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise"), *args], capture_output=True, text=True, timeout=60
    )


def test_keygen_writes_a_private_key_0600_and_will_not_replace_it(tmp_path: Path) -> None:
    first = edgewise("keygen", "--out", str(tmp_path))
    assert first.returncode == 0, first.stderr
    key = tmp_path / "signing.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in first.stdout + first.stderr
    before = key.read_bytes()
    again = edgewise("keygen", "--out", str(tmp_path))
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr
    assert key.read_bytes() == before
    forced = edgewise("keygen", "--out", str(tmp_path), "--force")
    assert forced.returncode == 0 and key.read_bytes() != before


def test_certs_refuses_bad_names_and_needs_a_broker_name(tmp_path: Path) -> None:
    bad = edgewise("certs", "--out", str(tmp_path), "--broker-name", "b", "--device", "cam/1")
    assert bad.returncode == 2 and "'cam/1'" in bad.stderr
    no_name = edgewise("certs", "--out", str(tmp_path / "fresh"), "--device", "cam-1")
    assert no_name.returncode == 2 and "--broker-name" in no_name.stderr
