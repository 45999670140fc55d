"""Argument types and the parser for ``edgewise``: bad usage is refused before any work starts,
in one line, with exit code 2; every option's help shows its default, and every subcommand takes
the global flags (``-v``) before or after its name."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from pydantic import TypeAdapter, ValidationError

from agent.clihelp import formatter_for, global_flags, subparsers_action
from agent.contract import DEVICE_ID_PATTERN, Topics, dot_problem, parse_semver
from agent.contract.manifest import Name

from .errors import EXIT_USAGE

_NAME = TypeAdapter(Name)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and pointing at ``--help``,
    and options are never guessed from a prefix (``--forc`` must not mean ``--force``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        formatter_for(kwargs)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("action", subparsers_action(global_flags(Parser)))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def target(value: str) -> str:
    _, _, name = value.partition(":")
    problem = dot_problem(name, "device" if value.startswith("device:") else "group")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    try:
        Topics().deploy(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def name(value: str) -> str:
    """A package name: it becomes a folder on the device, so it is checked before any work."""
    try:
        return _NAME.validate_python(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a package name: lower-case letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most 64 characters ({exc.errors()[0]['msg']})"
        ) from exc


def version(value: str) -> str:
    try:
        parse_semver(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a MAJOR.MINOR.PATCH version") from exc
    return value


def fraction(value: str) -> float:
    """In (0, 1): a pruning ratio or a MACs target."""
    number = _float(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction in (0, 1)")
    return number


def labeled_fraction(value: str) -> float:
    number = _float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction in (0, 1]")
    return number


def non_negative_float(value: str) -> float:
    number = _float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number ≥ 0")
    return number


def positive_float(value: str) -> float:
    number = _float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number > 0")
    return number


def round_to(value: str) -> int | str:
    """``auto`` (measured on this machine) or the channel multiple pruning keeps, 1 to 256."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 256:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not 'auto' or a whole number of channels from 1 to 256"
        )
    return number


def non_negative_int(value: str) -> int:
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number ≥ 0")
    return number


def nonempty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def positive_int(value: str) -> int:
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number ≥ 1")
    return number


def port(value: str) -> int:
    number = _int(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (1-65535)")
    return number


def topic_root(value: str) -> str:
    problem = dot_problem(value, "topic root")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    if not value or any(c in value for c in "#+\0") or value.startswith("$"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a topic root: no wildcards (#, +), no leading $, not empty"
        )
    return value.strip("/")


def readable_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return path


def _float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):  # NaN or infinite
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def path(value: str) -> Path:
    """A file or folder to write: an empty string would silently mean the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or folder")
    return Path(value)


def device_id(value: str) -> str:
    """A device id or group name as topics carry it: no separators, no wildcards, no '.'."""
    problem = dot_problem(value, "device or group")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    if not re.fullmatch(DEVICE_ID_PATTERN, value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a device id or group (letters, digits, '_', '-')"
        )
    return value
