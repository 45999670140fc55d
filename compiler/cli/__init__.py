"""``edgewise``: compile models into signed packages, push them to devices, read their results."""

# Nothing in compiler/cli imports torch or onnx at import time: the commands that need them (the
# compiler extra) import them when they run, so the fleet commands and --help work with the
# agent extra alone (tests/test_packaging.py).

from __future__ import annotations

import argparse
import sys

from agent.clihelp import add_completion, add_top_flags, print_completion
from agent.extras import EX_UNAVAILABLE, require
from agent.logs import setup_logging

from ..arguments import Parser
from ..failures import guarded
from . import compiling, console, control, delivery, fleet, recipe, rollout

# The commands that need more than the agent extra (which `edgewise` itself needs to start).
NEEDS = {"train": "compiler", "compile": "compiler", "vad": "compiler", "demo": "compiler"}


def _parser() -> argparse.ArgumentParser:
    """Each command adds its own parser and names the function that runs it (``func``)."""
    parser = Parser(prog="edgewise", description=__doc__)
    add_top_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    recipe.add_train(sub)
    compiling.add_keygen(sub)
    fleet.add_certs(sub)
    compiling.add_compile(sub)
    recipe.add_vad(sub)
    fleet.add_push(sub)
    fleet.add_results(sub)
    fleet.add_fleet(sub)
    control.add_command(sub)
    delivery.add_serve(sub)
    console.add_console_user(sub)
    delivery.add_gc(sub)
    delivery.add_withdraw(sub)
    rollout.add_rollout(sub)
    recipe.add_demo(sub)
    add_completion(sub, "edgewise", lambda args: print_completion(_parser(), args.shell))
    return parser


def missing_extra(args: argparse.Namespace) -> str | None:
    """The line naming the extra this command needs and lacks here; None when all is there."""
    extra = NEEDS.get(args.command)
    if extra is not None:
        return require("edgewise", extra, f"`edgewise {args.command}`")
    if args.command == "serve" and args.console is not None:
        return require("edgewise", "console", "`edgewise serve --console`")
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, "%(levelname)s %(name)s: %(message)s")
    problem = missing_extra(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EX_UNAVAILABLE
    return guarded("edgewise", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
