"""ONNX Runtime for the agent and its probe child, with Microsoft's telemetry off.

Official ORT builds (1.32 here) start a 1DS telemetry client as the library loads: it writes a
device id and an event database under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` (which
the unit's ``ProtectHome=`` forbids) and would upload them. ``ORT_DISABLE_TELEMETRY=1`` before the
first import keeps the client from starting — the probe child inherits it — and
``disable_telemetry_events()`` stops what the API can stop on builds that ignore the variable.
Agent code imports ``ort`` from here, never ``onnxruntime`` itself.
"""

from __future__ import annotations

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import onnxruntime as ort  # after the variable, on purpose

ort.disable_telemetry_events()

__all__ = ["ort"]
