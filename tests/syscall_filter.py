"""Run a command under a unit's ``SystemCallFilter=`` as systemd would apply it, without systemd:
``python syscall_filter.py UNIT COMMAND [ARGS...]``.

The allowed set is every name and group on the unit's allow lines (groups expanded with
``systemd-analyze syscall-filter``), less those on its ``~`` lines; anything else fails with the
unit's ``SystemCallErrorNumber=``. The filter is loaded through libseccomp (as systemd does) and
survives the exec. One line on stderr says it is in force, with proof: a call outside the set
failed with that errno."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def unit_filter(unit: Path) -> tuple[list[str], list[str], int]:
    """(allowed entries, denied entries, errno) from the unit's [Service] lines."""
    allow: list[str] = []
    deny: list[str] = []
    number = errno.EPERM
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SystemCallFilter":
            if value.startswith("~"):
                deny += value[1:].split()
            else:
                allow += value.split()
        elif key == "SystemCallErrorNumber":
            number = getattr(errno, value)
    return allow, deny, number


def expand(entries: list[str], seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    names: set[str] = set()
    for entry in entries:
        if not entry.startswith("@"):
            names.add(entry)
        elif entry not in seen:
            seen.add(entry)
            listing = subprocess.run(
                ["systemd-analyze", "syscall-filter", entry],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout  # fmt: skip
            members = [w.strip() for w in listing.splitlines()[1:]]
            names |= expand([m for m in members if m and not m.startswith("#")], seen)
    return names


def load(allowed: set[str], number: int) -> int:
    """Install the filter in this process; returns how many calls it allows on this arch."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | number)
    count = 0
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        # Names of other architectures resolve to nothing here, as systemd skips them.
        if nr >= 0 and lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) == 0:
            count += 1
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit("syscall_filter: seccomp_load failed")
    return count


def main() -> None:
    unit, command = Path(sys.argv[1]), sys.argv[2:]
    allow, deny, number = unit_filter(unit)
    allowed = expand(allow) - expand(deny)
    count = load(allowed, number)
    try:
        os.setgroups(os.getgroups())  # in @privileged (a no-op if let through)
        proof = "setgroups succeeded"
    except OSError as exc:
        proof = f"setgroups: {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    print(f"syscall_filter: {count} calls allowed from {unit.name}; {proof}", file=sys.stderr)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
