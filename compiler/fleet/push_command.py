"""``edgewise push`` as a user runs it: check the package, warn about a device nobody has seen,
send with progress on a terminal, and with ``--wait`` report what every device did with it.

Exit codes: 0 pushed (and, with ``--wait``, active on every targeted device); 1 the broker or a
device said no, or stayed silent; 2 the package folder is missing or not a package; 130 Ctrl-C
(from the CLI's guard, after the connection was closed cleanly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from agent.contract import MANIFEST_FILE, ContractError, Package, Topics, read_package

from ..errors import InputError
from .mqtt import BrokerAddress, Subscriber, connect, disconnect
from .progress import TransferProgress
from .push import push_package
from .verdicts import ACTIVE, DeployWatch, Verdict

EXIT_OK, EXIT_NOT_ACTIVE = 0, 1


def load_package(root: Path) -> Package:
    """The package at ``root``, with every file it sends present; InputError (exit 2) if not."""
    if not root.exists():
        raise InputError(f"package folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is a file; give the package folder (NAME-VERSION/)")
    if not (root / MANIFEST_FILE).is_file():
        raise InputError(f"{root} is not a package: it has no {MANIFEST_FILE}")
    try:
        package = read_package(root)
    except ContractError as exc:
        raise InputError(str(exc)) from exc
    for blob, path in package.blobs():
        if not path.is_file():
            raise InputError(f"package {root} is incomplete: {blob.path} is missing")
    return package


def run_push(args: argparse.Namespace, address: BrokerAddress) -> int:
    package = load_package(args.package)
    topics, name, version = Topics(args.topic_root), package.manifest.name, package.manifest.version
    device = args.to.partition(":")[2] if args.to.startswith("device:") else None
    client = connect(address)
    try:
        watch = None
        if device is not None or args.wait is not None:
            watch = DeployWatch(client, topics, args.to, name, version)
            watch.start(Subscriber(client))
        if device is not None and watch is not None and not watch.has_connected(device):
            _say(
                f"edgewise: warning: device {device} has never connected to this broker; "
                "the package waits retained until it does"
            )
        progress = _progress(package, sys.stderr if sys.stderr.isatty() else None)
        try:
            push_package(
                client,
                topics,
                package,
                args.to,
                signing_key=args.key,
                rollback=args.rollback,
                on_acked=progress.chunk,
            )
        finally:
            progress.close()
        print(f"pushed {name} {version} to {args.to} ({progress.summary()})", flush=True)
        if args.wait is None or watch is None:
            return EXIT_OK
        return _report(watch, args.to, args.wait)
    finally:
        disconnect(client)


def _progress(package: Package, stream: TextIO | None) -> TransferProgress:
    blobs = package.blobs()
    return TransferProgress(
        f"pushing {package.manifest.name} {package.manifest.version}",
        sum(len(blob.chunks) for blob, _ in blobs),
        sum(blob.size for blob, _ in blobs),
        stream,
    )


def _report(watch: DeployWatch, target: str, seconds: float) -> int:
    """One line per device on stdout; 0 only if every targeted device made it active."""
    if watch.group is not None:
        _say(
            f"edgewise: note: a device's status does not say which groups it is in; waiting "
            f"{seconds:g} s and reporting the devices that answer for {target}"
        )
    verdicts: list[Verdict] = watch.wait(seconds)
    for verdict in verdicts:
        print(verdict.line(), flush=True)
    if not verdicts:
        print(f"{target}: no answer within {seconds:g} s from any device", flush=True)
    return EXIT_OK if verdicts and all(v.outcome == ACTIVE for v in verdicts) else EXIT_NOT_ACTIVE


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
