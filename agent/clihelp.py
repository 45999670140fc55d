"""What both commands (``edgewise`` and ``edgewise-agent``) share on the command line: help that
shows defaults, flags accepted before or after the subcommand, ``--version`` and completion.

Standard library only (``shtab`` is imported when a completion script is asked for).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.extras import EX_UNAVAILABLE

SHELLS = ("bash", "zsh")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless there is none to show (None, False) or the
    help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == []
        if nothing or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The same, with a description and epilog kept as written (examples, tables)."""


def formatter_for(kwargs: dict[str, Any]) -> None:
    """Sets ``formatter_class`` in a parser's keyword arguments: the raw variant where the caller
    asked for raw text, the default-showing one otherwise."""
    asked = kwargs.get("formatter_class")
    raw = asked is not None and issubclass(asked, argparse.RawDescriptionHelpFormatter)
    kwargs["formatter_class"] = RawHelpFormatter if raw else HelpFormatter


_COMMON: dict[type, argparse.ArgumentParser] = {}


def global_flags(parser_class: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """A parent parser every subcommand gets: ``-v`` works before or after the subcommand.
    SUPPRESS as default: the subcommand's copy sets nothing unless given, so it never resets a
    ``-v`` given before the subcommand. One per parser class (its error() is the one used)."""
    if parser_class not in _COMMON:
        common = parser_class(add_help=False)
        common.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
            help="debug logs, and a traceback for an unexpected error",
        )  # fmt: skip
        _COMMON[parser_class] = common
    return _COMMON[parser_class]


def subparsers_action(common: argparse.ArgumentParser) -> type[argparse.Action]:
    """A subparsers action whose every ``add_parser`` inherits ``common``'s flags (and, being
    created by the same parser class, the same one-line errors and help formatter)."""

    class WithGlobals(argparse._SubParsersAction):
        def add_parser(self, name: str, **kwargs: Any) -> Any:
            kwargs["parents"] = [*kwargs.get("parents", ()), common]
            return super().add_parser(name, **kwargs)

    return WithGlobals


def add_top_flags(parser: argparse.ArgumentParser) -> None:
    """``-v`` and ``--version`` on the top-level parser."""
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="debug logs, and a traceback for an unexpected error",
    )  # fmt: skip
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )  # fmt: skip


def add_completion(sub: Any, prog: str, run: Callable[[argparse.Namespace], int]) -> None:
    """``PROG completion bash|zsh``: the shell completion script on stdout."""
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description=f"Print a completion script for the shell. bash: `{prog} completion bash > "
        f"~/.local/share/bash-completion/completions/{prog}`; zsh: `{prog} completion zsh > "
        f"~/.zfunc/_{prog}` (with ~/.zfunc on $fpath).",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(func=run)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str | None:
    """The script, or None when ``shtab`` (in the ``agent`` extra) is not installed."""
    if importlib.util.find_spec("shtab") is None:
        return None
    import shtab

    return str(shtab.complete(parser, shell=shell))


def print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    script = completion_script(parser, shell)
    if script is None:
        print(
            f'{parser.prog}: completion needs shtab, in the "agent" extra: '
            "pip install 'edgewise[agent]'",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    sys.stdout.write(script)
    return 0
