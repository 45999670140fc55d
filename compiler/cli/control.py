"""``edgewise command TARGET CMD [ARGS...]``: a signed command to devices, and their replies.

Exit codes: 0 at least one device answered and every device that answered ended ``done``;
1 a device rejected the command or failed it, did not finish in time, or no device answered
(or the broker failed); 2 bad usage or input (target, arguments, key); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from agent.contract import PayloadError, Topics, parse_json
from agent.contract.commands import MAX_LIFETIME_S

from .. import arguments as arg
from ..errors import InputError
from .common import Subparsers, add_broker_args, broker_address, writable_folder

EXIT_OK, EXIT_NOT_DONE = 0, 1
KNOWN = "ping, status, config, rollback, results, rate, snapshot, restart, shadow"
_CMD = re.compile(r"^[a-z][a-z_]{0,31}$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

EPILOG = """\
ARGS are key=value; a value that reads as JSON is that (numbers, true, null,
{"person":0.7}), anything else a string. A bare word is the action:
  edgewise command device:cam-1 ping --key command.key
  edgewise command group:lobby results mode=all min_score=0.6 --key command.key
  edgewise command device:cam-1 rate max_fps=null --key command.key
  edgewise command device:cam-1 snapshot --out shots --key command.key
  edgewise command device:cam-1 shadow start version=1.1.0 --key command.key
"""


def add_command(sub: Subparsers) -> None:
    command = sub.add_parser(
        "command",
        help="send a signed command to a device, a group or the fleet and print the replies",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "target", type=arg.target, metavar="device:ID|group:NAME|all",
        help="one device, a deploy group, or the whole fleet",
    )  # fmt: skip
    command.add_argument("cmd", type=command_name, metavar="CMD", help=KNOWN)
    command.add_argument("args", nargs="*", metavar="ARGS", help="key=value, or the action")
    command.add_argument(
        "--key", type=arg.readable_file, required=True, metavar="PRIVATE_KEY",
        help="the command-signing key (PEM Ed25519); devices trust its public half in "
        "[commands] public_keys",
    )  # fmt: skip
    command.add_argument(
        "--timeout", type=arg.positive_float, default=10.0, metavar="SECONDS",
        help="wait this long for replies (a group or the fleet: always, unless --expect)",
    )  # fmt: skip
    command.add_argument(
        "--expect", type=arg.positive_int, metavar="N",
        help="a group or the fleet: stop once N devices finished",
    )  # fmt: skip
    command.add_argument(
        "--ttl", type=lifetime, default=60.0, metavar="SECONDS",
        help="devices refuse the command after this long (default 60)",
    )  # fmt: skip
    command.add_argument(
        "--out", type=arg.path, default=Path("."), metavar="DIR",
        help="snapshot: write DEVICE-ID.jpg here (default .)",
    )  # fmt: skip
    command.add_argument("--json", action="store_true", help="one JSON line per reply")
    add_broker_args(command)
    command.set_defaults(func=run_command)


def command_name(value: str) -> str:
    if not _CMD.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a command ({KNOWN})")
    return value


def lifetime(value: str) -> float:
    seconds = arg.positive_float(value)
    if seconds > MAX_LIFETIME_S:
        raise argparse.ArgumentTypeError(f"{value!r}: devices take at most {MAX_LIFETIME_S} s")
    return seconds


def command_args(items: list[str]) -> dict[str, Any]:
    """``key=value`` words as a dict (the value as JSON when it parses); the one bare word is
    ``action``. InputError (exit 2) for a bad key, a key given twice or two bare words."""
    args: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            key, text = "action", item
            if "action" in args:
                raise InputError(
                    f"{item!r}: one bare word only (the action); give the rest as key=value"
                )
        elif not _KEY.fullmatch(key):
            raise InputError(f"{item!r}: the key must be letters, digits and '_' (key=value)")
        if key in args:
            raise InputError(f"{key!r} given twice")
        args[key] = _value(text) if eq else text
    return args


def _value(text: str) -> Any:
    try:
        return parse_json(text)
    except PayloadError:
        return text  # not JSON: a string, so version=1.1.0 needs no quotes


def run_command(args: argparse.Namespace) -> int:
    from ..fleet.command import CommandSession, new_command, signed
    from ..fleet.mqtt import Subscriber, connect, disconnect

    if args.expect is not None and args.target.startswith("device:"):
        raise InputError("--expect is for group:NAME or all; a device answers once")
    if args.cmd == "snapshot":
        writable_folder(args.out, "--out")
    command = new_command(args.cmd, command_args(args.args), args.target, args.ttl)
    envelope = signed(command, args.key)
    client = connect(broker_address(args))
    try:
        session = CommandSession(client, Topics(args.topic_root), command, args.out)
        session.subscribe(Subscriber(client))
        session.send(envelope)
        for answer in session.answers(args.timeout, args.expect):
            print(answer.json_line() if args.json else answer.line(), flush=True)
    finally:
        disconnect(client)
    return _verdict(session, args)


def _verdict(session: Any, args: argparse.Namespace) -> int:
    answered = sorted(session.answered)
    if not answered:
        _say(
            f"edgewise: no reply to {args.cmd} from {args.target} within {args.timeout:g} s; "
            "check that the device trusts this --key ([commands] public_keys in its config), "
            "the target, and the broker (--host, --port, --topic-root)"
        )
        return EXIT_NOT_DONE
    unfinished = [d for d in answered if session.final(d) is None]
    if unfinished:
        _say(
            f"edgewise: {', '.join(unfinished)} accepted {args.cmd} but did not finish within "
            f"{args.timeout:g} s"
        )
    done = all(session.final(d) == "done" for d in answered)
    return EXIT_OK if done else EXIT_NOT_DONE


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
