"""``edgewise certs``, ``push``, ``results`` and ``fleet``: the broker and the devices on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.contract import Topics

from .. import arguments as arg
from .common import Subparsers, add_broker_args, add_json, as_json, broker_address, writable_folder

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from ..fleet.results import DeviceFeed


def add_certs(sub: Subparsers) -> None:
    certs = sub.add_parser(
        "certs",
        help="fleet CA, broker and client certificates, the broker's ACL file and CRL; renew "
        "and revoke certificates",
    )
    certs.add_argument("--out", type=arg.path, required=True, help="folder; what exists is kept")
    certs.add_argument(
        "--broker-name", action="append", default=[], help="DNS name or IP of the broker (repeat)"
    )
    certs.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID[:GROUP,...]",
        help="a device to issue a certificate for, with its deploy groups (repeat)",
    )
    certs.add_argument(
        "--topic-root", type=arg.topic_root, default="edgewise", help="the fleet's topic root"
    )
    certs.add_argument(
        "--days",
        type=arg.positive_int,
        default=365,
        help="validity of the certificates issued or renewed in this run, in days",
    )
    certs.add_argument(
        "--renew",
        action="append",
        default=[],
        metavar="ID",
        help="a new key and certificate for this device (or broker, edgewise-cloud), same "
        "identity; the old one works until it expires or --revoke-old (repeat)",
    )
    certs.add_argument(
        "--revoke",
        action="append",
        default=[],
        metavar="ID",
        help="revoke every certificate of this device (or edgewise-cloud) and drop it from the "
        "ACL; the broker refuses it once it reloads the CRL (repeat)",
    )
    certs.add_argument(
        "--revoke-old",
        action="append",
        default=[],
        metavar="ID",
        help="revoke only the certificates --renew superseded for this device (repeat)",
    )
    certs.add_argument(
        "--crl", action="store_true", help="re-sign crl.pem now (before its next update)"
    )
    certs.add_argument(
        "--crl-days",
        type=arg.positive_int,
        default=180,
        help="how long a CRL signed in this run stays valid; the broker refuses every client "
        "once it has expired",
    )
    certs.set_defaults(func=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..fleet import renewal
    from ..fleet.certs import build_fleet

    devices = {}
    for spec in args.device:
        device, _, groups = spec.partition(":")
        devices[device] = [g for g in groups.split(",") if g]
    both = sorted(set(devices) & set(args.revoke + args.renew))
    if both:
        raise InputError(f"{both[0]}: named in --device and in --renew/--revoke; pick one")
    writable_folder(args.out, "--out")
    topics = Topics(args.topic_root)
    for name in dict.fromkeys(args.renew):
        print(renewal.renew(args.out, name, args.days))
    for line in renewal.revoke_all(
        args.out, args.revoke, args.revoke_old, topics, resign=args.crl, crl_days=args.crl_days
    ):
        print(line)
    maintenance = args.revoke or args.revoke_old or args.renew or args.crl
    if maintenance and not devices and not args.broker_name:
        return 0  # nothing to issue: a revocation rewrote the ACL already
    for cert in build_fleet(args.out, devices, args.broker_name, topics, days=args.days):
        print(f"{cert} ({cert.with_suffix('.key').name} is private: mode 0600){expiry(cert)}")
    print(f"{args.out / 'edgewise.acl'}: the broker's acl_file")
    warning = renewal.crl_warning(args.out)
    if warning:
        print(f"edgewise: warning: {warning}", file=sys.stderr)
    return 0


def expiry(cert: Path) -> str:
    """``, expires DATE`` (with a warning inside 30 days): renewals are the operator's job."""
    import datetime as dt

    from cryptography import x509

    until = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    left = until - dt.datetime.now(dt.timezone.utc)
    soon = f": renew it, {max(left.days, 0)} days left" if left < dt.timedelta(days=30) else ""
    return f", expires {until:%Y-%m-%d}{soon}"


def add_push(sub: Subparsers) -> None:
    from .delivery import url_base

    push = sub.add_parser("push", help="publish a package to a device, a group or the fleet")
    push.add_argument("package", type=Path, help="the package folder (NAME-VERSION/)")
    push.add_argument(
        "--to", type=arg.target, required=True, metavar="device:ID|group:NAME|all",
        help="one device, a deploy group, or the whole fleet",
    )  # fmt: skip
    push.add_argument("--key", type=Path, help="re-sign the package bound to this target")
    push.add_argument(
        "--rollback", action="store_true", help="signed rollback: may replace a newer version"
    )
    push.add_argument(
        "--shadow",
        action="store_true",
        help="install it beside the serving model and compare on live frames, not serve it "
        "(needs --key; promote with `edgewise command TARGET shadow promote`)",
    )
    push.add_argument(
        "--wait",
        type=arg.positive_float,
        metavar="SECONDS",
        help="then wait for each device's verdict; exit 1 unless all made it active",
    )
    push.add_argument(
        "--chunks",
        choices=("retained", "request", "http"),
        default="retained",
        help="how devices get the chunks: retained on the broker (default), on request from "
        "`edgewise serve`, or over HTTP from --url; request and http need --key",
    )
    push.add_argument(
        "--blobs",
        type=arg.path,
        metavar="DIR",
        help="the blob store: request copies the files here for `edgewise serve` (default "
        "./edgewise-blobs); http writes them here to upload",
    )
    push.add_argument(
        "--url",
        action="append",
        type=url_base,
        metavar="BASE",
        help="http: devices read each blob at BASE/<sha256> (repeat: tried in order)",
    )
    push.add_argument(
        "--keep-blobs",
        action="store_true",
        help="with --wait: do not clear chunks no deployment uses once all devices are active",
    )
    add_json(push, "the package, target, chunks, devices' outcomes with --wait")
    add_broker_args(push)
    push.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    from ..fleet import push_command

    if args.json:
        return as_json(lambda record: push_command.run_push(args, broker_address(args), record))
    return push_command.run_push(args, broker_address(args))


def add_results(sub: Subparsers) -> None:
    results = sub.add_parser("results", help="consume results devices publish (deduplicated)")
    results.add_argument("--device", type=arg.device_id, help="one device; default all")
    results.add_argument(
        "--count",
        type=arg.positive_int,
        help="stop after this many results (with --client-id, at the end of that batch)",
    )
    results.add_argument(
        "--timeout",
        type=arg.positive_float,
        default=3600,
        help="stop after this many seconds without a new result, counted from the start",
    )
    results.add_argument("--json", action="store_true", help="print JSON Lines, not a summary")
    results.add_argument("--jsonl", type=Path, help="append results to this JSON Lines file")
    results.add_argument("--sqlite", type=Path, help="store results in this SQLite file")
    results.add_argument(
        "--postgres",
        type=arg.nonempty,
        metavar="DSN",
        help="store results in PostgreSQL ('host=H dbname=D user=U' or postgresql://U@H/D)",
    )
    split = results.add_mutually_exclusive_group()
    split.add_argument(
        "--group",
        type=arg.device_id,
        help="shared subscription group: consumers in one group split the results "
        "(a broker without shared subscriptions: exit 2, use --partition)",
    )
    split.add_argument(
        "--partition",
        type=_partition,
        metavar="I/N",
        help="keep only devices whose sha256(id) mod N is I (0..N-1): N consumers split the "
        "devices on any broker",
    )
    results.add_argument(
        "--client-id", help="a fixed id keeps a broker session: results wait while away"
    )
    add_broker_args(results)
    results.set_defaults(func=run_results)


def _partition(value: str) -> object:
    from ..fleet.results import Partition

    return Partition.parse(value)


def run_results(args: argparse.Namespace) -> int:
    """Until --count new results, or --timeout seconds without a new one (counted from the
    start, so it ends even if nothing ever arrives); Ctrl-C keeps the summary and exits 130.
    The feed subscribes again on every reconnect; a refused subscription is an error (exit 1);
    --group on a broker without shared subscriptions is exit 2."""
    from ..errors import InputError
    from ..failures import EXIT_INTERRUPTED
    from ..fleet.consume import Consumer, Sinks, listening, warn_if_group_unknowable
    from ..fleet.mqtt import capabilities, connect, disconnect
    from ..fleet.results import DeviceFeed

    if args.partition is not None and args.device:
        raise InputError("--partition splits all devices between consumers; drop --device")
    persistent = bool(args.client_id)
    feeds: list[DeviceFeed] = []
    client, consumer, interrupted = None, None, False
    sinks = Sinks(args.jsonl, args.sqlite, args.postgres)

    def prepare(client: mqtt.Client) -> None:
        # Before CONNECT: what a persistent session kept arrives right after CONNACK.
        topics = Topics(args.topic_root)
        feeds.append(
            DeviceFeed(
                client, topics, args.device, args.group, persistent, partition=args.partition
            )
        )

    try:
        client = connect(
            broker_address(args),
            client_id=args.client_id,
            clean_session=not persistent,
            prepare=prepare,
        )
        feeds[0].wait_subscribed(10)
        listening(feeds[0])
        warn_if_group_unknowable(feeds[0], capabilities(client).protocol)
        consumer = Consumer(feeds[0], sinks, args.json, persistent)
        consumer.run(args.count, args.timeout)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if client is not None:
            disconnect(client)
        sinks.close()
    summary = consumer.summary if consumer else "0 results, 0 duplicates dropped"
    if interrupted:
        print(f"edgewise: interrupted; {summary}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary, file=sys.stderr)
    return 0


def add_fleet(sub: Subparsers) -> None:
    from ..fleet.table import SORT_KEYS, sort_key

    fleet = sub.add_parser(
        "fleet", help="a live table of devices from status, telemetry and the fleet summary"
    )
    fleet.add_argument("--once", action="store_true", help="print the table once and exit")
    fleet.add_argument(
        "--interval", type=arg.positive_float, default=2.0, help="seconds between two tables"
    )
    fleet.add_argument(
        "--wait",
        type=arg.positive_float,
        metavar="SECONDS",
        help="listen this long before the first table (default --interval): live telemetry "
        "fills devices where retained messages do not reach a wildcard subscription",
    )
    fleet.add_argument(
        "--stale-after",
        type=arg.positive_float,
        metavar="SECONDS",
        help="a device not heard from this long is stale, its figures blanked (default 3 x its "
        "telemetry interval, 30 s when unknown)",
    )
    fleet.add_argument(
        "--sort",
        type=sort_key,
        choices=SORT_KEYS,
        metavar="COLUMN",
        help="order the rows by this column (its key or heading, e.g. p99_ms or CPU%%); "
        "unknown values last; default device. One of: " + ", ".join(SORT_KEYS),
    )
    fleet.add_argument(
        "--reverse", action="store_true", help="the largest (or last alphabetically) first"
    )
    fleet.add_argument(
        "--json",
        action="store_true",
        help="one JSON document of the rows per table instead of text (JSON lines without "
        "--once): {at, broker_connected, broker_lost_since, devices: [...]}",
    )
    add_broker_args(fleet)
    fleet.set_defaults(func=run_fleet)


def _colour() -> bool:
    """ANSI colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    import os

    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def run_fleet(args: argparse.Namespace) -> int:
    """Retained status and telemetry of every device, the retained fleet summary on its exact
    topic, then whatever arrives live; the table every --interval (first after --wait), with a
    HEALTH column (stale and offline rows coloured or marked), and a banner line above it while
    the broker connection is lost; with --json one JSON document per table instead."""
    import time

    from ..fleet.mqtt import connect, disconnect
    from ..fleet.table import document, sorted_rows
    from ..fleet.view import FleetView

    view = FleetView(Topics(args.topic_root), stale_after=args.stale_after)
    colour = _colour()
    client = connect(broker_address(args))
    try:
        view.follow(client)
        pause = args.wait if args.wait is not None else args.interval
        while True:
            time.sleep(pause)  # a refresh period for the screen, not synchronisation
            pause = args.interval
            if args.json:
                rows = sorted_rows(view.rows(), args.sort, args.reverse)
                print(document(rows, view.lost_since(), time.time()), flush=True)
            else:
                clear = "\033[2J\033[H" if not args.once and sys.stdout.isatty() else ""
                print(clear + view.table(colour, args.sort, args.reverse), flush=True)
            if args.once:
                return 0
    finally:  # Ctrl-C leaves through here: a clean disconnect, then "interrupted", exit 130
        disconnect(client)
