"""``edgewise push`` as a user runs it: check the package, warn about a device nobody has seen,
send with progress on a terminal, and with ``--wait`` report what every device did with it.

``--chunks`` picks how devices get the chunks (retained on the broker, by request from
``edgewise serve``, or over HTTP); with ``--wait``, once every targeted device runs the new
version, the chunks no retained deployment references are cleared (gc) unless ``--keep-blobs``.

Exit codes: 0 pushed (and, with ``--wait``, active on every targeted device); 1 the broker or a
device said no, or stayed silent; 2 the package folder is missing or not a package, or the
chunks cannot travel as asked (no --key, a broker packet cap); 130 Ctrl-C (from the CLI's
guard, after the connection was closed cleanly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.contract import (
    MANIFEST_FILE,
    BlobSpec,
    ContractError,
    Delivery,
    Package,
    Topics,
    read_package,
)

from ..errors import InputError
from .blobstore import DEFAULT_STORE, BlobStore
from .delivery import DeliveryChoice, check_choice, plan_blobs
from .gc import run_gc
from .mqtt import BrokerAddress, Subscriber, capabilities, connect, disconnect
from .progress import TransferProgress
from .push import push_package
from .verdicts import ACTIVE, STAGED, DeployWatch, Verdict

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

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


def delivery_choice(args: argparse.Namespace) -> DeliveryChoice:
    """``--chunks``, ``--url`` and ``--blobs`` as one choice, checked before connecting."""
    mode: Delivery = getattr(args, "chunks", "retained")
    store = getattr(args, "blobs", None)
    if mode == "request" and store is None:
        store = DEFAULT_STORE
    choice = DeliveryChoice(mode, tuple(getattr(args, "url", None) or ()), store)
    check_choice(choice, args.key)
    if mode == "retained" and store is not None:
        raise InputError("--blobs is for --chunks request or http")
    return choice


def run_push(
    args: argparse.Namespace, address: BrokerAddress, record: dict[str, Any] | None = None
) -> int:
    """Pushes and reports in lines on stdout; ``record`` (for ``--json``) gets the same facts."""
    record = {} if record is None else record
    package = load_package(args.package)
    choice = delivery_choice(args)
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
        specs = _prepare_blobs(client, topics, package, choice, args.key is not None)
        how = _send(client, topics, package, args, choice, specs)
        record.update(name=name, version=version, target=args.to, chunks=choice.mode, sent=how)
        print(f"pushed {name} {version} to {args.to} ({how})", flush=True)
        if args.wait is None or watch is None:
            return EXIT_OK
        code = _report(
            watch, args.to, args.wait, STAGED if getattr(args, "shadow", False) else ACTIVE, record
        )
        if code == EXIT_OK and not getattr(args, "keep_blobs", False):
            print(f"gc after {name} {version} went active: {run_gc(client, topics).line()}")
        return code
    finally:
        disconnect(client)


def _prepare_blobs(
    client: mqtt.Client, topics: Topics, package: Package, choice: DeliveryChoice, signed: bool
) -> list[BlobSpec]:
    """The blobs as this push describes them, copied into the store when one is used."""
    caps = capabilities(client)
    specs = plan_blobs(package, choice, caps, topics, signed)
    compiled = [spec for spec, _ in package.blobs()]
    if [s.chunk_size for s in specs] != [s.chunk_size for s in compiled]:
        _say(
            f"edgewise: note: the broker takes packets of at most {caps.maximum_packet_size} "
            f"bytes; re-chunked to {min(s.chunk_size for s in specs)}-byte chunks for this push"
        )
    if choice.store is not None:
        BlobStore(choice.store).put_package(package, specs)
        where = (
            f"serve them with `edgewise serve --blobs {choice.store}`"
            if choice.mode == "request"
            else "upload them to each --url (BASE/<sha256>)"
        )
        print(f"stored {len(specs)} blobs in {choice.store}: {where}", flush=True)
    return specs


def _send(
    client: mqtt.Client,
    topics: Topics,
    package: Package,
    args: argparse.Namespace,
    choice: DeliveryChoice,
    specs: list[BlobSpec],
) -> str:
    """Pushes; what the summary line says about the chunks."""
    publishing = choice.publishes_chunks
    progress = _progress(package, specs, sys.stderr if publishing and sys.stderr.isatty() else None)
    try:
        push_package(
            client, topics, package, args.to, signing_key=args.key, rollback=args.rollback,
            on_acked=progress.chunk, delivery=choice.mode, specs=specs,
            shadow=getattr(args, "shadow", False),
        )  # fmt: skip
    finally:
        progress.close()
    if choice.mode == "request":
        return f"{sum(len(s.chunks) for s in specs)} chunks on request from `edgewise serve`"
    if choice.mode == "http":
        return f"chunks over HTTP from {len(choice.url_bases)} URL(s) per blob"
    return progress.summary()


def _progress(package: Package, specs: list[BlobSpec], stream: TextIO | None) -> TransferProgress:
    return TransferProgress(
        f"pushing {package.manifest.name} {package.manifest.version}",
        sum(len(blob.chunks) for blob in specs),
        sum(blob.size for blob in specs),
        stream,
    )


def _report(
    watch: DeployWatch, target: str, seconds: float, goal: str, record: dict[str, Any]
) -> int:
    """One line per device on stdout; 0 only if every targeted device reached ``goal`` (active,
    or staged for a shadow push)."""
    if watch.group is not None:
        _say(
            f"edgewise: note: a group's members answer as they come; waiting "
            f"{seconds:g} s and reporting the devices that answer for {target} "
            "(`edgewise rollout` takes a group's devices from their status)"
        )
    verdicts: list[Verdict] = watch.wait(seconds)
    record["devices"] = [
        {"device": v.device, "outcome": v.outcome, "detail": v.detail} for v in verdicts
    ]
    for verdict in verdicts:
        print(verdict.line(), flush=True)
    if not verdicts:
        print(f"{target}: no answer within {seconds:g} s from any device", flush=True)
    return EXIT_OK if verdicts and all(v.outcome == goal for v in verdicts) else EXIT_NOT_ACTIVE


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
