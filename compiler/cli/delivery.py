"""``edgewise serve``, ``gc`` and ``withdraw``: the chunks and deployments the broker keeps.

Exit codes: 0 done (``serve``: stopped by Ctrl-C or SIGTERM); 1 the broker failed or went
silent; 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from pydantic import TypeAdapter, ValidationError

from agent.contract import Topics
from agent.contract.manifest import HttpUrl

from .. import arguments as arg
from .common import Subparsers, add_broker_args, broker_address
from .console import add_console_args, console_options, packages_folder

_URL = TypeAdapter(HttpUrl)


def url_base(value: str) -> str:
    """An http(s) URL a blob's sha256 is appended to."""
    try:
        return _URL.validate_python(value.rstrip("/"))
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an http:// or https:// URL with a host"
        ) from None


def add_serve(sub: Subparsers) -> None:
    serve = sub.add_parser(
        "serve", help="answer devices' chunk requests and keep the fleet state (a daemon)"
    )
    serve.add_argument(
        "--blobs",
        type=arg.path,
        default="edgewise-blobs",
        metavar="DIR",
        help="the blob store `edgewise push --chunks request` fills (default ./edgewise-blobs)",
    )
    serve.add_argument(
        "--shared",
        action="store_true",
        help="several serve processes split the requests (an MQTT shared subscription)",
    )
    serve.add_argument(
        "--state-interval",
        type=arg.positive_float,
        default=2.0,
        metavar="SECONDS",
        help="publish the fleet state at most this often, when it changed",
    )
    serve.add_argument(
        "--db",
        metavar="PATH|postgresql://...",
        help="drive the rollouts kept in this database (a SQLite file or PostgreSQL); "
        "without it serve runs no rollouts",
    )
    serve.add_argument(
        "--key",
        type=arg.readable_file,
        metavar="PRIVATE_KEY",
        help="rollouts: re-sign each device's manifest, bound to that device (Ed25519 PEM)",
    )
    serve.add_argument(
        "--command-key",
        type=arg.readable_file,
        metavar="PRIVATE_KEY",
        help="rollouts: sign the rollback and shadow promote commands (Ed25519 PEM)",
    )
    add_broker_args(serve)
    add_console_args(serve)
    serve.set_defaults(func=run_serve)


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    """Until Ctrl-C or SIGTERM, then a clean stop and exit 0."""
    from pathlib import Path

    from ..compile.report_package import rewrite_page
    from ..console.server import with_console
    from ..fleet.feedback import with_feedback
    from ..fleet.serve import ServeOptions, Service
    from ..rollout.controller import with_rollouts

    topics = Topics(args.topic_root)
    console = console_options(args)  # a bad users file stops it before anything connects
    options = ServeOptions(
        Path(args.blobs), topics, args.shared, args.state_interval,
        db=args.db, signing_key=args.key, command_key=args.command_key,
    )  # fmt: skip
    options = with_console(with_rollouts(options), console)
    # --packages: devices' installed figures go into those packages' reports (fleet.feedback)
    options = with_feedback(options, packages_folder(args), rewrite_page)
    service = Service(broker_address(args), options)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        service.start()
        blobs = len(service.store.specs())
        print(
            f"serving {blobs} blobs from {args.blobs} on {service.subscription}; "
            f"fleet state on {topics.fleet_state()}"
            + (f"; rollouts from {args.db}" if args.db else ""),
            flush=True,
        )
        if "console" in service.jobs:
            print(f"console on {service.jobs['console'].url}", flush=True)  # type: ignore[attr-defined]
        service.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    print(f"stopped: {service.summary()}", file=sys.stderr, flush=True)
    return 0


def add_gc(sub: Subparsers) -> None:
    gc = sub.add_parser("gc", help="clear retained chunks no retained deployment references")
    gc.add_argument(
        "--dry-run", action="store_true", help="say what would be removed; change nothing"
    )
    gc.add_argument(
        "--timeout", type=arg.positive_float, default=30.0, metavar="SECONDS",
        help="give up on the broker after this long",
    )  # fmt: skip
    add_broker_args(gc)
    gc.set_defaults(func=run_gc_command)


def run_gc_command(args: argparse.Namespace) -> int:
    from ..fleet.gc import run_gc
    from ..fleet.mqtt import connect, disconnect

    client = connect(broker_address(args))
    try:
        print(run_gc(client, Topics(args.topic_root), args.dry_run, args.timeout).line())
    finally:
        disconnect(client)
    return 0


def add_withdraw(sub: Subparsers) -> None:
    withdraw = sub.add_parser(
        "withdraw", help="clear a target's retained deployment (devices keep what they run)"
    )
    withdraw.add_argument(
        "target", type=arg.target, metavar="device:ID|group:NAME|all",
        help="the device, deploy group or fleet whose retained deployment to clear",
    )  # fmt: skip
    withdraw.add_argument(
        "--timeout", type=arg.positive_float, default=30.0, metavar="SECONDS",
        help="give up on the broker after this long",
    )  # fmt: skip
    add_broker_args(withdraw)
    withdraw.set_defaults(func=run_withdraw)


def run_withdraw(args: argparse.Namespace) -> int:
    from ..fleet.mqtt import connect, disconnect
    from ..fleet.withdraw import withdraw

    client = connect(broker_address(args))
    try:
        done = withdraw(client, Topics(args.topic_root), args.target, timeout=args.timeout)
    finally:
        disconnect(client)
    for line in done.lines():
        print(line)
    return 0
