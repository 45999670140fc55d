"""The int8 targets and calibration methods by name, and this machine's target.

Standard library only: the CLI lists these as choices without importing onnx or ONNX Runtime's
quantization tools (``edgewise --help`` works where only the ``agent`` extra is installed).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

Target = Literal["x86-vnni", "x86-avx2", "arm64"]
Calibration = Literal["minmax", "entropy", "percentile"]
TARGETS: tuple[Target, ...] = ("x86-vnni", "x86-avx2", "arm64")
CALIBRATIONS: tuple[Calibration, ...] = ("minmax", "entropy", "percentile")


def detect_target() -> Target:
    """The ISA of this machine, which decides how int8 kernels may saturate."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "x86-vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "x86-avx2"
