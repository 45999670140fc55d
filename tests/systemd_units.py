"""Reading the shipped systemd units the way systemd does, and what systemd-analyze rates them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def directives(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (continued lines joined), values in file order."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def exposure(analyze: str, unit: Path) -> tuple[float | None, subprocess.CompletedProcess[str]]:
    """``systemd-analyze security``'s overall exposure level for the file itself (--offline,
    systemd 252+; --threshold is on the 0-100 scale), and the run for the failure message."""
    run = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", run.stdout)
    return (float(found.group(1)) if found else None), run
