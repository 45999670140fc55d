"""What several commands share: the broker options, and checking a folder before any work."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from .. import arguments as arg
from ..arguments import Parser
from ..errors import InputError

if TYPE_CHECKING:
    from ..fleet.mqtt import BrokerAddress

# Every sub-parser is a Parser too: its usage errors are one line as well.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=arg.port, default=1883)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--topic-root", type=arg.topic_root, default="edgewise")
    parser.add_argument(
        "--tls-ca", type=arg.readable_file, help="broker CA certificate: connect with TLS"
    )
    parser.add_argument(
        "--tls-cert", type=arg.readable_file, help="client certificate (with --tls-ca)"
    )
    parser.add_argument(
        "--tls-key", type=arg.readable_file, help="client private key (with --tls-ca)"
    )


def broker_address(args: argparse.Namespace) -> BrokerAddress:
    from ..fleet.mqtt import BrokerAddress

    return BrokerAddress(
        args.host, args.port, args.username, args.password, args.tls_ca, args.tls_cert, args.tls_key
    )


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
