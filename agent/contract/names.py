"""Names that become folders and files on the device, and the ones they may never be.

A package name is a folder under ``models/``; the model and golden file names are files in a
slot. They must not collide with what the agent keeps beside them (``current``, ``previous``,
``incoming``, ``quarantine.json``, a slot's ``envelope.json``), nor be a name Windows reserves
for a device (``con``, ``nul``, ``com1``…): a state directory copied to or shared with such a
file system would break on it.
"""

from __future__ import annotations

RESERVED = frozenset({"current", "previous", "incoming", "quarantine", "models", "envelope"})
WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
# What the store appends to its own work files; a name ending so could be mistaken for one.
WORK_SUFFIXES = (".tmp", ".part", ".staging")


def not_reserved(value: str) -> str:
    """Validator: ``value`` unless its stem (before the first dot) is reserved. Runs after the
    pattern check, so ``value`` is short and printable."""
    stem = value.split(".", 1)[0].lower()
    if stem in RESERVED:
        raise ValueError(f"{value!r} is reserved on the device ({stem!r})")
    if stem in WINDOWS_DEVICES:
        raise ValueError(f"{value!r} is a reserved device name ({stem!r})")
    if value.lower().endswith(WORK_SUFFIXES):
        raise ValueError(f"{value!r} ends like one of the agent's work files")
    return value
