"""Which optional extra brings which importable module, and one line saying which is missing.

Standard library only: the console-script launchers import this before anything third-party, so
that ``pip install edgewise`` without an extra ends in a line naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

EX_UNAVAILABLE = 69  # sysexits.h: a needed part (here: an extra's packages) is not installed

# The import names of each extra's packages (pyproject.toml's [project.optional-dependencies]).
EXTRAS: dict[str, tuple[str, ...]] = {
    "agent": (
        "onnxruntime", "numpy", "paho", "cv2", "cryptography", "pydantic",
        *(("tomli",) if sys.version_info < (3, 11) else ()),
    ),
    "compiler": (
        "torch", "onnx", "onnxscript", "torch_pruning", "sklearn", "tqdm", "matplotlib",
        "soundfile",
    ),
    "console": ("aiohttp",),
    "postgres": ("psycopg",),
    "serial": ("serial",),
    "prometheus": ("prometheus_client",),
    "audio": ("sounddevice", "soundfile"),
    "openvino": ("openvino",),
    "demo": ("amqtt",),
}  # fmt: skip


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found, not imported: cheap)."""
    absent = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a blocked or half-installed package
            found = False
        if not found:
            absent.append(module)
    return absent


def extra_of(module: str) -> str | None:
    """The extra that brings ``module`` (a dotted name's top package), if one does."""
    top = module.split(".")[0]
    for extra in ("agent", "compiler", *EXTRAS):
        if top in EXTRAS[extra]:
            return extra
    return None


def install_hint(prog: str, extra: str, what: str, absent: list[str]) -> str:
    """One line: what needs which extra, what is missing, and the pip command."""
    return (
        f'{prog}: {what} needs the "{extra}" extra (missing: {", ".join(absent)}): '
        f"pip install 'edgewise[{extra}]'"
    )


def require(prog: str, extra: str, what: str) -> str | None:
    """None when ``extra`` is importable, else the line to print (exit ``EX_UNAVAILABLE``)."""
    absent = missing(extra)
    return install_hint(prog, extra, what, absent) if absent else None
