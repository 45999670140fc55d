"""What several commands share: the broker options (the password from a file or the environment,
not only the command line), and checking a folder before any work."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import arguments as arg
from ..arguments import Parser
from ..errors import InputError

if TYPE_CHECKING:
    from ..fleet.mqtt import BrokerAddress

# Every sub-parser is a Parser too: its usage errors are one line as well.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


PASSWORD_ENV = "EDGEWISE_MQTT__PASSWORD"  # the name the agent's config reads too


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker", "the MQTT broker and how to log in to it")
    group.add_argument("--host", default="127.0.0.1", help="the broker's host name or address")
    group.add_argument("--port", type=arg.port, default=1883, help="the broker's port")
    group.add_argument("--username", help="log in as this user (with a password)")
    password = group.add_mutually_exclusive_group()
    password.add_argument(
        "--password-file", type=arg.readable_file, metavar="FILE",
        help=f"the broker password: the first line of FILE (or set ${PASSWORD_ENV})",
    )  # fmt: skip
    password.add_argument(
        "--password",
        help="the broker password itself: other users of this machine can read it in the "
        "process list; prefer --password-file or the environment",
    )
    group.add_argument(
        "--topic-root", type=arg.topic_root, default="edgewise",
        help="the first level of every Edgewise topic (as the devices' [mqtt] topic_root)",
    )  # fmt: skip
    group.add_argument(
        "--tls-ca", type=arg.readable_file, help="broker CA certificate: connect with TLS"
    )
    group.add_argument(
        "--tls-cert", type=arg.readable_file, help="client certificate (with --tls-ca)"
    )
    group.add_argument(
        "--tls-key", type=arg.readable_file, help="client private key (with --tls-ca)"
    )


def broker_password(args: argparse.Namespace) -> str | None:
    """--password-file, else --password, else $EDGEWISE_MQTT__PASSWORD, else none."""
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"--password-file {args.password_file}: cannot read it ({exc})"
            ) from exc
        if not lines or not lines[0]:
            raise InputError(f"--password-file {args.password_file}: the first line is empty")
        return lines[0]
    if args.password is not None:
        return str(args.password)
    return os.environ.get(PASSWORD_ENV) or None


def broker_address(args: argparse.Namespace) -> BrokerAddress:
    from ..fleet.mqtt import BrokerAddress

    return BrokerAddress(
        args.host, args.port, args.username, broker_password(args), args.tls_ca, args.tls_cert,
        args.tls_key,
    )  # fmt: skip


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json", action="store_true",
        help=f"one JSON object on stdout ({what}, exit, error); the usual lines go to stderr",
    )  # fmt: skip


def as_json(run: Callable[[dict[str, Any]], int]) -> int:
    """``--json``: runs ``run`` (which fills a record) with its human lines moved to stderr, then
    prints the record, the exit code and any error as one JSON object on stdout. The error is
    still one line on stderr too; the exit code is the one it would have had without --json."""
    from ..failures import describe, one_line

    record: dict[str, Any] = {}
    error = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            code = run(record)
    except Exception as exc:
        code, message = describe(exc)
        error = one_line(message)
        print(f"edgewise: {error}", file=sys.stderr)
    error = error if error is not None else record.pop("error", None)  # run's own failure line
    print(json.dumps({**record, "exit": code, "error": error}, default=str), flush=True)
    return code


def writable_folder(path: Path, what: str, create: bool = True) -> None:
    """Checked before any work: an hour of training must not end on an unwritable path."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{what} {path}: cannot create it: {exc.strerror}") from exc
    elif not path.is_dir():
        raise InputError(f"{what} {path} does not exist; create it first")
    if not os.access(path, os.W_OK):
        raise InputError(f"{what} {path} is not writable")
