"""The ``edgewise`` console script: checks that the ``agent`` extra is installed before importing
anything third-party, so a bare ``pip install edgewise`` ends in one line naming the extra.

Standard library and ``agent``'s plain modules only, until the check passed.
"""

from __future__ import annotations

import sys

from agent import __version__
from agent.extras import EX_UNAVAILABLE, missing


def version_only(argv: list[str]) -> bool:
    """``--version`` (with ``-v`` at most): answered without any extra installed."""
    return "--version" in argv and all(a in ("--version", "-v", "--verbose") for a in argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if version_only(args):
        print(f"edgewise {__version__}")
        return 0
    absent = missing("agent")
    if absent:
        print(
            f'edgewise: needs at least the "agent" extra (missing: {", ".join(absent)}): '
            "pip install 'edgewise[compiler]' for every command, or 'edgewise[agent]' for the "
            "fleet commands only",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    from compiler.cli import main as cli_main

    return cli_main(args)
