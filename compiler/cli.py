"""``edgewise``: compile models into signed packages, push them to devices, read their results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.contract import ContractError, PreprocessSpec, Topics, generate_keypair
from agent.logs import setup_logging

from . import arguments
from .arguments import Parser
from .compile.quantize import CALIBRATIONS, TARGETS
from .errors import CompilerError, InputError
from .failures import EXIT_FAILED, describe, guarded, one_line

EXIT_COMPILE = 2  # compile failed (bad input, missed accuracy budget); no package written


_target = arguments.target


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=arguments.port, default=1883)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--topic-root", type=arguments.topic_root, default="edgewise")
    parser.add_argument(
        "--tls-ca", type=arguments.readable_file, help="broker CA certificate: connect with TLS"
    )
    parser.add_argument(
        "--tls-cert", type=arguments.readable_file, help="client certificate (with --tls-ca)"
    )
    parser.add_argument(
        "--tls-key", type=arguments.readable_file, help="client private key (with --tls-ca)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="edgewise", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="the recipe on the bundled digits: contrastive pre-training, then fine-tuning"
    )
    train.add_argument(
        "--out", type=arguments.path, required=True, help="pickled nn.Module to write"
    )
    train.add_argument("--labeled-fraction", type=arguments.labeled_fraction, default=1.0)
    train.add_argument(
        "--pretrain-epochs", type=arguments.non_negative_int, default=10,
        help="0 trains from scratch",
    )  # fmt: skip
    train.add_argument(
        "--epochs", type=arguments.positive_int, default=6, help="fine-tuning epochs"
    )
    train.add_argument("--seed", type=arguments.non_negative_int, default=0)

    keygen = sub.add_parser("keygen", help="write an Ed25519 signing key pair")
    keygen.add_argument(
        "--out", type=arguments.path, required=True, help="folder for signing.key/.pub"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")

    certs = sub.add_parser(
        "certs", help="fleet CA, broker and client certificates, and the broker's ACL file"
    )
    certs.add_argument(
        "--out", type=arguments.path, required=True, help="folder; what exists is kept"
    )
    certs.add_argument(
        "--broker-name", action="append", default=[], help="DNS name or IP of the broker (repeat)"
    )
    certs.add_argument(
        "--device", action="append", default=[], metavar="ID[:GROUP,...]",
        help="a device to issue a certificate for, with its deploy groups (repeat)",
    )  # fmt: skip
    certs.add_argument("--topic-root", type=arguments.topic_root, default="edgewise")

    comp = sub.add_parser("compile", help="prune, export, int8-quantize, evaluate and sign a model")
    comp.add_argument(
        "model", help="ONNX, TorchScript or pickled nn.Module file, or package.module:factory"
    )
    comp.add_argument("--weights", type=arguments.readable_file, help="state_dict for a factory")
    comp.add_argument(
        "--output", help="ONNX inputs with several outputs: the one to serve (default: the first)"
    )
    comp.add_argument("--name", type=arguments.name, required=True)
    comp.add_argument("--version", type=arguments.version, required=True)
    comp.add_argument(
        "--key", type=arguments.readable_file, required=True, help="Ed25519 private key (PEM)"
    )
    comp.add_argument("--out", type=arguments.path, default=Path("packages"))
    comp.add_argument(
        "--data", default="digits", help="'digits', an image folder (<label>/<image>) or an .npz"
    )
    comp.add_argument(
        "--preprocess",
        type=arguments.readable_file,
        help="TOML/JSON preprocessing spec (default: the data's own)",
    )
    comp.add_argument(
        "--seed", type=arguments.non_negative_int, default=0,
        help="seed of the train/held-out split",
    )  # fmt: skip
    prune = comp.add_mutually_exclusive_group()
    prune.add_argument("--prune-ratio", type=arguments.fraction, help="share of channels to remove")
    prune.add_argument(
        "--target-macs", type=arguments.fraction, help="prune to this fraction of MACs"
    )
    comp.add_argument("--recovery-epochs", type=arguments.non_negative_int, default=3)
    comp.add_argument(
        "--max-accuracy-drop", type=arguments.non_negative_float, default=1.0, help="top-1 points"
    )
    comp.add_argument("--calibration", choices=CALIBRATIONS, default="minmax")
    comp.add_argument("--calibration-samples", type=arguments.positive_int, default=256)
    comp.add_argument("--target", choices=TARGETS, help="default: this machine's ISA")
    comp.add_argument("--chunk-size", type=arguments.positive_int, default=128 * 1024)
    comp.add_argument("--no-html", action="store_true", help="skip the HTML report")

    push = sub.add_parser("push", help="publish a package to a device, a group or the fleet")
    push.add_argument("package", type=Path)
    push.add_argument("--to", type=_target, required=True, metavar="device:ID|group:NAME|all")
    push.add_argument("--key", type=Path, help="re-sign the package bound to this target")
    push.add_argument(
        "--rollback", action="store_true", help="signed rollback: may replace a newer version"
    )
    push.add_argument(
        "--wait", type=arguments.positive_float, metavar="SECONDS",
        help="then wait for each device's verdict; exit 1 unless all made it active",
    )  # fmt: skip
    _broker_args(push)

    results = sub.add_parser("results", help="consume results devices publish (deduplicated)")
    results.add_argument("--device", type=arguments.device_id, help="one device; default all")
    results.add_argument(
        "--count", type=arguments.positive_int,
        help="stop after this many results (with --client-id, at the end of that batch)",
    )  # fmt: skip
    results.add_argument(
        "--timeout", type=arguments.positive_float, default=3600,
        help="stop after this many seconds without a new result, counted from the start",
    )  # fmt: skip
    results.add_argument("--json", action="store_true", help="print JSON Lines, not a summary")
    results.add_argument("--jsonl", type=Path, help="append results to this JSON Lines file")
    results.add_argument("--sqlite", type=Path, help="store results in this SQLite file")
    results.add_argument(
        "--group",
        type=arguments.device_id,
        help="shared subscription group: consumers in one group split the results",
    )
    results.add_argument(
        "--client-id", help="a fixed id keeps a broker session: results wait while away"
    )
    _broker_args(results)

    fleet = sub.add_parser("fleet", help="a live table of devices from status and telemetry")
    fleet.add_argument("--once", action="store_true", help="print the table once and exit")
    fleet.add_argument("--interval", type=arguments.positive_float, default=2.0)
    _broker_args(fleet)

    demo = sub.add_parser("demo", help="train, compile, push and run the agent end to end")
    demo.add_argument("--workdir", type=arguments.path, default=Path("demo-out"))
    demo.add_argument("--digits", type=arguments.positive_int, default=100)
    demo.add_argument(
        "--embedded-broker", action="store_true", help="use amqtt even if mosquitto exists"
    )
    return parser


def _address(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .fleet.mqtt import BrokerAddress

    return BrokerAddress(
        args.host, args.port, args.username, args.password, args.tls_ca, args.tls_cert, args.tls_key
    )


def _read_spec(path: Path) -> PreprocessSpec:
    import tomllib
    from pydantic import ValidationError

    from .compile.datasets import DataError

    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return PreprocessSpec.model_validate(data)
    except (OSError, ValueError, ValidationError) as exc:
        raise DataError(f"--preprocess {path}: {exc}") from exc


def _compile(args: argparse.Namespace) -> int:
    """Every failure exits 2 with one line and leaves no package behind."""
    from .compile.datasets import DataError
    from .compile.loading import load_model
    from .compile.pipeline import CompileOptions, check_signing_key, compile_model
    from .compile.report import format_table
    from .recipe.digits import load_dataset

    if args.out.exists():  # not created here: a failed compile leaves nothing behind
        _writable_folder(args.out, "--out", create=False)
    try:
        check_signing_key(args.key)
        source = load_model(args.model, args.weights)
        dataset = load_dataset(args.data, seed=args.seed)
        spec = _read_spec(args.preprocess) if args.preprocess else dataset.preprocess
        if spec is None:
            raise DataError(
                f"--data {args.data}: give --preprocess (size, colour, scale, mean/std)"
            )
        options = CompileOptions(
            name=args.name, version=args.version, signing_key=args.key, out_dir=args.out,
            max_accuracy_drop=args.max_accuracy_drop, calibration=args.calibration,
            calibration_samples=args.calibration_samples, target=args.target,
            chunk_size=args.chunk_size, prune_ratio=args.prune_ratio,
            target_macs=args.target_macs, recovery_epochs=args.recovery_epochs,
            html=not args.no_html, progress=sys.stderr.isatty(), output=args.output,
        )  # fmt: skip
        result = compile_model(source, dataset, spec, options)
    except (CompilerError, ContractError, OSError) as exc:
        print(f"edgewise: compile failed: {one_line(describe(exc)[1])}", file=sys.stderr)
        return EXIT_COMPILE
    print(format_table(result.report))
    print(f"package: {result.package.root}")
    if result.html:
        print(f"report:  {result.html}")
    return 0


def _consume(args: argparse.Namespace) -> int:
    """Until --count new results, or --timeout seconds without a new one (counted from the
    start, so it ends even if nothing ever arrives); Ctrl-C keeps the summary and exits 130.
    The feed subscribes again on every reconnect; a refused subscription is an error (exit 1)."""
    from .failures import EXIT_INTERRUPTED
    from .fleet.consume import Consumer, Sinks, listening
    from .fleet.mqtt import connect, disconnect
    from .fleet.results import DeviceFeed

    persistent, feeds, client = bool(args.client_id), [], None
    interrupted, consumer = False, None
    sinks = Sinks(args.jsonl, args.sqlite)

    def prepare(client):  # type: ignore[no-untyped-def]
        # Before CONNECT: what a persistent session kept arrives right after CONNACK.
        feeds.append(DeviceFeed(client, Topics(args.topic_root), args.device, args.group,
                                manual_ack=persistent))  # fmt: skip

    try:
        client = connect(
            _address(args), client_id=args.client_id, clean_session=not persistent,
            prepare=prepare,
        )  # fmt: skip
        feeds[0].wait_subscribed(10)
        listening(feeds[0])
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


def _fleet(args: argparse.Namespace) -> int:
    import time

    from .fleet.mqtt import connect, disconnect
    from .fleet.view import FleetView

    view, topics = FleetView(), Topics(args.topic_root)
    client = connect(_address(args))
    client.on_message = lambda _c, _u, msg: view.update(msg.topic, bytes(msg.payload))
    client.subscribe([(topics.all_devices("status"), 1), (topics.all_devices("telemetry"), 1)])
    try:
        while True:
            time.sleep(args.interval)  # a refresh period for the screen, not synchronisation
            print("\033[2J\033[H" if not args.once else "", end="")
            print(view.table(), flush=True)
            if args.once:
                return 0
    finally:  # Ctrl-C leaves through here: a clean disconnect, then "interrupted", exit 130
        disconnect(client)


def _writable_folder(path: Path, what: str, create: bool = True) -> None:
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


def _run(args: argparse.Namespace) -> int:
    if args.command == "keygen":
        _writable_folder(args.out, "--out")
        if (args.out / "signing.key").exists() and not args.force:
            raise InputError(
                f"{args.out / 'signing.key'} exists; replacing it would orphan every device "
                "that trusts it (--force to replace)"
            )
        kid = generate_keypair(args.out / "signing.key", args.out / "signing.pub")
        print(f"key {kid}: {args.out / 'signing.key'} (keep secret), {args.out / 'signing.pub'}")
        return 0
    if args.command == "certs":
        from .fleet.certs import build_fleet

        devices = {}
        for spec in args.device:
            device, _, groups = spec.partition(":")
            devices[device] = [g for g in groups.split(",") if g]
        _writable_folder(args.out, "--out")
        topics = Topics(args.topic_root)
        for cert in build_fleet(args.out, devices, args.broker_name, topics):
            print(f"{cert} ({cert.with_suffix('.key').name} is private: mode 0600)")
        print(f"{args.out / 'edgewise.acl'}: the broker's acl_file")
        return 0
    if args.command == "train":
        import torch

        from .recipe.demo_model import torch_accuracy
        from .recipe.digits import PREPROCESS, load_dataset
        from .recipe.pretrain import train_recipe

        _writable_folder(args.out.parent, "--out's folder", create=False)
        if args.out.is_dir():
            raise InputError(f"--out {args.out} is a folder; name the model file to write")
        data = load_dataset("digits", seed=args.seed)
        model = train_recipe(
            data.train, PREPROCESS, labeled_fraction=args.labeled_fraction,
            pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.epochs, seed=args.seed,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
        torch.save(model, args.out)
        print(f"held-out accuracy {torch_accuracy(model, data.test, PREPROCESS):.4f} -> {args.out}")
        return 0
    if args.command == "compile":
        return _compile(args)
    if args.command == "push":
        from .fleet.push_command import run_push

        return run_push(args, _address(args))
    if args.command == "results":
        return _consume(args)
    if args.command == "fleet":
        return _fleet(args)
    if args.command == "demo":
        from .recipe.demo import run_demo

        _writable_folder(args.workdir, "--workdir")
        outcome = run_demo(args.workdir, args.digits, args.embedded_broker)
        return 0 if outcome.results and outcome.accuracy >= 0.9 else EXIT_FAILED
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, "%(levelname)s %(name)s: %(message)s")
    return guarded("edgewise", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
