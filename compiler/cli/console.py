"""The fleet console: ``edgewise serve --console`` options and ``edgewise console-user``."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import arguments as arg
from ..console.auth import CREDENTIAL, default_users_path, hash_password, load_users, new_token
from ..errors import InputError
from .common import Subparsers

if TYPE_CHECKING:
    from ..console.server import ConsoleOptions

DEFAULT_PORT = 8080


def console_address(value: str) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1) or ``HOST:PORT``; ``[::1]:PORT`` for IPv6."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080)"
        )
    return host, number


def add_console_args(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("console", "the fleet console: a web page for the fleet")
    group.add_argument(
        "--console",
        type=console_address,
        metavar="[HOST:]PORT",
        help=f"serve the console here (e.g. {DEFAULT_PORT}: 127.0.0.1 only; 0.0.0.0:{DEFAULT_PORT}"
        " for the network, best behind an HTTPS proxy)",
    )
    group.add_argument(
        "--users",
        type=arg.readable_file,
        metavar="FILE",
        help=f"the console's users (`edgewise console-user` writes the lines); default: the "
        f"systemd credential {CREDENTIAL}",
    )
    group.add_argument(
        "--console-cert",
        type=arg.readable_file,
        metavar="PEM",
        help="serve HTTPS: certificate chain",
    )
    group.add_argument(
        "--console-key", type=arg.readable_file, metavar="PEM", help="the certificate's private key"
    )
    group.add_argument(
        "--packages",
        type=arg.path,
        metavar="DIR",
        help="package folders (NAME-VERSION/) whose compile reports the console shows and "
        "diffs; devices' installed figures go into their reports (also without --console)",
    )
    group.add_argument(
        "--results",
        metavar="PATH|postgresql://...",
        help="the store `edgewise results --sqlite/--postgres` fills: devices' recent results",
    )
    group.add_argument(
        "--stale-after",
        type=arg.positive_float,
        metavar="SECONDS",
        help="show a device stale after this long unheard (default: 3 telemetry intervals)",
    )


def users_file(given: Path | None) -> Path:
    """--users, else the systemd credential; InputError saying how to make one."""
    if given is not None:
        return given
    credential = default_users_path()
    if credential is not None and credential.is_file():
        return credential
    raise InputError(
        "the console needs its users: --users FILE or the systemd credential "
        f"{CREDENTIAL}; write a line with `edgewise console-user NAME --role operator`"
    )


def packages_folder(args: argparse.Namespace) -> Path | None:
    """--packages, checked: the console's reports and the feedback job's devices' figures."""
    if args.packages is not None and not args.packages.is_dir():
        raise InputError(f"--packages {args.packages} is not a folder")
    return args.packages


def console_options(args: argparse.Namespace) -> ConsoleOptions | None:
    """What --console asks for, checked before anything connects; None without --console."""
    if args.console is None:
        for flag in ("users", "console_cert", "console_key", "results", "stale_after"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')} is a console option: add --console")
        return None
    from ..console.server import ConsoleOptions

    if (args.console_cert is None) != (args.console_key is None):
        raise InputError("HTTPS needs both --console-cert and --console-key")
    host, port = args.console
    return ConsoleOptions(
        host=host,
        port=port,
        users=load_users(users_file(args.users)),
        certificate=args.console_cert,
        certificate_key=args.console_key,
        packages=packages_folder(args),
        results_db=args.results,
        stale_after=args.stale_after,
    )


def add_console_user(sub: Subparsers) -> None:
    user = sub.add_parser(
        "console-user", help="a line for the console's users file (a password or an API token)"
    )
    user.add_argument("name", type=arg.device_id, metavar="NAME", help="the user's login name")
    user.add_argument(
        "--role", choices=("viewer", "operator"), default="viewer",
        help="viewer: reads the console; operator: also acts on devices",
    )  # fmt: skip
    user.add_argument(
        "--token",
        action="store_true",
        help="an API token (Authorization: Bearer) instead of a password: printed once",
    )
    user.set_defaults(func=run_console_user)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise InputError("the passwords differ; run it again")
        return first
    return sys.stdin.readline().rstrip("\n")  # piped: the first line


def run_console_user(args: argparse.Namespace) -> int:
    """Prints the users-file line (and a token on stderr); exit 2 for a short password."""
    if args.token:
        token, secret = new_token()
        print(f"{args.name} {args.role} {secret}")
        print(f"token for {args.name} (shown once): {token}", file=sys.stderr)
        return 0
    password = _read_password()
    if len(password) < 8:
        raise InputError("the password needs at least 8 characters")
    print(f"{args.name} {args.role} {hash_password(password)}")
    return 0
