"""``edgewise``: compile models into signed packages, push them to devices, read their results."""

from __future__ import annotations

import argparse
import sys

from agent.logs import setup_logging

from ..arguments import Parser
from ..failures import guarded
from . import compiling, console, control, delivery, fleet, recipe, rollout


def _parser() -> argparse.ArgumentParser:
    """Each command adds its own parser and names the function that runs it (``func``)."""
    parser = Parser(prog="edgewise", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    recipe.add_train(sub)
    compiling.add_keygen(sub)
    fleet.add_certs(sub)
    compiling.add_compile(sub)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, "%(levelname)s %(name)s: %(message)s")
    return guarded("edgewise", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
