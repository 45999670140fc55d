"""The ``edgewise-agent`` console script: checks that the ``agent`` extra is installed before
importing anything third-party, so a bare ``pip install edgewise`` ends in one line naming it.

Standard library only, until the check passed.
"""

from __future__ import annotations

import sys

from agent import __version__
from agent.extras import EX_UNAVAILABLE, require


def version_only(argv: list[str]) -> bool:
    """``--version`` (with ``-v`` at most): answered without the extra installed."""
    return "--version" in argv and all(a in ("--version", "-v", "--verbose") for a in argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if version_only(args):
        print(f"edgewise-agent {__version__}")
        return 0
    problem = require("edgewise-agent", "agent", "the device agent")
    if problem is not None:
        print(problem, file=sys.stderr)
        return EX_UNAVAILABLE
    from agent.cli import main as cli_main

    return cli_main(args)
