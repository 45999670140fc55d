"""``edgewise keygen`` and ``edgewise compile``: the signing key, and a model made a package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.contract import AnySpec, ContractError, generate_keypair
from agent.contract.manifest import PostprocessSpec

from .. import arguments as arg
from ..compile.targets import CALIBRATIONS, TARGETS
from ..errors import CompilerError, InputError
from ..failures import describe, one_line
from .common import Subparsers, add_json, as_json, writable_folder

if TYPE_CHECKING:
    from ..compile.kernels import RoundTo
    from ..compile.pipeline import CompileOptions


def add_keygen(sub: Subparsers) -> None:
    keygen = sub.add_parser("keygen", help="write an Ed25519 signing key pair")
    keygen.add_argument("--out", type=arg.path, required=True, help="folder for signing.key/.pub")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")
    keygen.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    writable_folder(args.out, "--out")
    if (args.out / "signing.key").exists() and not args.force:
        raise InputError(
            f"{args.out / 'signing.key'} exists; replacing it would orphan every device "
            "that trusts it (--force to replace)"
        )
    kid = generate_keypair(args.out / "signing.key", args.out / "signing.pub")
    print(f"key {kid}: {args.out / 'signing.key'} (keep secret), {args.out / 'signing.pub'}")
    return 0


def add_compile(sub: Subparsers) -> None:
    comp = sub.add_parser("compile", help="prune, export, int8-quantize, evaluate and sign a model")
    comp.add_argument(
        "model", help="ONNX, TorchScript or pickled nn.Module file, or package.module:factory"
    )
    comp.add_argument("--weights", type=arg.readable_file, help="state_dict for a factory")
    comp.add_argument(
        "--output", help="ONNX inputs with several outputs: the one to serve (default: the first)"
    )
    comp.add_argument("--name", type=arg.name, required=True, help="the package's name")
    comp.add_argument(
        "--version", type=arg.version, required=True, help="the package's MAJOR.MINOR.PATCH"
    )
    comp.add_argument(
        "--key", type=arg.readable_file, required=True, help="Ed25519 private key (PEM)"
    )
    comp.add_argument(
        "--out", type=arg.path, default=Path("packages"), help="folder for NAME-VERSION/"
    )
    comp.add_argument(
        "--data",
        default="digits",
        help="'digits', an image folder (<label>/<image>) or an .npz (images or float32 windows)",
    )
    comp.add_argument(
        "--preprocess",
        help="TOML/JSON preprocessing spec: image (default), sensor, logmel or waveform "
        "(default: the data's own)",
        type=arg.readable_file,
    )
    comp.add_argument(
        "--postprocess",
        help="TOML/JSON postprocessing spec, e.g. kind = 'events' for keyword spotting "
        "(default: top-1 classification over the data's labels)",
        type=arg.readable_file,
    )
    comp.add_argument(
        "--seed", type=arg.non_negative_int, default=0, help="seed of the train/held-out split"
    )
    _add_pruning(comp)
    comp.add_argument(
        "--max-accuracy-drop", type=arg.non_negative_float, default=1.0, help="top-1 points"
    )
    comp.add_argument(
        "--calibration", choices=CALIBRATIONS, default="minmax",
        help="how int8 ranges are chosen from the calibration activations",
    )  # fmt: skip
    comp.add_argument(
        "--calibration-samples", type=arg.positive_int, default=256,
        help="training samples the int8 ranges are calibrated on",
    )  # fmt: skip
    comp.add_argument("--target", choices=TARGETS, help="default: this machine's ISA")
    _add_output(comp)
    comp.set_defaults(func=run_compile)


def _add_output(comp: argparse.ArgumentParser) -> None:
    """What is written besides the package: its chunks, the report and what it compares with."""
    comp.add_argument(
        "--chunk-size", type=arg.positive_int, default=128 * 1024,
        help="bytes per chunk the model travels in to devices",
    )  # fmt: skip
    comp.add_argument("--no-html", action="store_true", help="skip the HTML report")
    comp.add_argument(
        "--previous",
        type=arg.path,
        metavar="PKG_DIR",
        help="compare the report with this package (default: the highest lower version of "
        "--name in --out, when there is one)",
    )
    add_json(comp, "package, report, metrics")


def _add_pruning(comp: argparse.ArgumentParser) -> None:
    """How much to prune (one way of three), how the channel counts round, and the recovery."""
    prune = comp.add_mutually_exclusive_group()
    prune.add_argument("--prune-ratio", type=arg.fraction, help="share of channels to remove")
    prune.add_argument("--target-macs", type=arg.fraction, help="prune to this fraction of MACs")
    prune.add_argument(
        "--prune",
        choices=("auto",),
        help="auto: the most pruning whose int8 model keeps --max-accuracy-drop (and "
        "--max-latency-ms), by bisection over the channel ratio",
    )
    comp.add_argument(
        "--max-latency-ms",
        type=arg.positive_float,
        help="with --prune auto: the int8 model's p50 on one thread of this machine at most this",
    )
    comp.add_argument(
        "--round-to",
        type=arg.round_to,
        help="when pruning: each layer keeps a multiple of this many channels; auto (the default "
        "for this machine; 8 for another --target): the multiple its int8 kernels run fastest, "
        "measured",
    )
    comp.add_argument(
        "--recovery-epochs", type=arg.non_negative_int, default=3,
        help="after pruning: fine-tuning epochs that recover accuracy",
    )  # fmt: skip


def run_compile(args: argparse.Namespace) -> int:
    if args.json:
        return as_json(lambda record: _compile(args, record))
    return _compile(args, {})


def _compile(args: argparse.Namespace, record: dict[str, Any]) -> int:
    """Every failure is one line and leaves no package behind; its exit code says whose it is:
    2 the command, 65 a file's content (model, data, spec, key), 1 the compile itself (the
    accuracy budget missed, an export that diverges)."""
    from ..compile.datasets import check_fits, check_labels
    from ..compile.loading import load_model
    from ..compile.pipeline import check_signing_key, compile_model
    from ..compile.report_render import format_table
    from ..recipe.digits import load_dataset

    if args.out.exists():  # not created here: a failed compile leaves nothing behind
        writable_folder(args.out, "--out", create=False)
    try:
        if args.max_latency_ms is not None and args.prune != "auto":
            raise InputError("--max-latency-ms applies to --prune auto only")
        _check_round_to(args)
        check_signing_key(args.key)
        source = load_model(args.model, args.weights)
        dataset = load_dataset(args.data, seed=args.seed)
        spec = _read_spec(args.preprocess) if args.preprocess else dataset.preprocess
        if spec is None:
            raise InputError(
                f"--data {args.data}: give --preprocess (size, colour, scale, mean/std)"
            )
        check_fits(args.data, dataset, spec)
        post = _read_post(args.postprocess) if args.postprocess else None
        if post is not None:
            check_labels(post, dataset.labels)
        result = compile_model(source, dataset, spec, _compile_options(args, post))
    except (CompilerError, ContractError, OSError) as exc:
        code, message = describe(exc)
        record["error"] = one_line(message)
        print(f"edgewise: compile failed: {one_line(message)}", file=sys.stderr)
        return code
    manifest = result.package.manifest
    record.update(name=manifest.name, version=manifest.version, package=result.package.root)
    record.update(report=result.html, metrics=result.report.as_metrics())
    print(format_table(result.report))
    print(f"package: {result.package.root}")
    if result.html:
        print(f"report:  {result.html}")
    return 0


def _compile_options(
    args: argparse.Namespace, postprocess: PostprocessSpec | None
) -> CompileOptions:
    from ..compile.pipeline import CompileOptions

    return CompileOptions(
        name=args.name,
        version=args.version,
        signing_key=args.key,
        out_dir=args.out,
        max_accuracy_drop=args.max_accuracy_drop,
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
        target=args.target,
        chunk_size=args.chunk_size,
        prune_ratio=args.prune_ratio,
        target_macs=args.target_macs,
        prune_auto=args.prune == "auto",
        max_latency_ms=args.max_latency_ms,
        round_to=_round_to(args),
        recovery_epochs=args.recovery_epochs,
        html=not args.no_html,
        progress=sys.stderr.isatty(),
        output=args.output,
        postprocess=postprocess,
        previous=args.previous,
    )


def _round_to(args: argparse.Namespace) -> RoundTo:
    """The multiple given, or by default what this machine's kernels run fastest (measured, when
    pruning for this machine) and 8 for another target."""
    from ..compile.quantize import detect_target

    if args.round_to is not None:
        return args.round_to
    return "auto" if args.target in (None, detect_target()) else 8


def _check_round_to(args: argparse.Namespace) -> None:
    """--round-to shapes pruning only; auto measures this machine, so not for another target."""
    from ..compile.quantize import detect_target

    if args.round_to is None:
        return
    if args.prune_ratio is None and args.target_macs is None and args.prune is None:
        raise InputError("--round-to applies when pruning (--prune-ratio, --target-macs, --prune)")
    if args.round_to == "auto" and args.target not in (None, detect_target()):
        raise InputError(
            f"--round-to auto measures this machine ({detect_target()}), not --target "
            f"{args.target}: give the multiple for {args.target} as a number"
        )


def _read_spec(path: Path) -> AnySpec:
    from agent.contract import InputTransform

    return _read_model(path, "--preprocess", InputTransform)


def _read_post(path: Path) -> PostprocessSpec:
    from agent.contract.manifest import PostprocessSpec

    return _read_model(path, "--postprocess", PostprocessSpec)


def _read_model(path: Path, option: str, kind: Any) -> Any:
    """A TOML or JSON file validated as ``kind``; one line naming what is wrong otherwise."""
    import tomllib
    from pydantic import TypeAdapter, ValidationError

    from agent.contract import describe_errors

    from ..compile.datasets import DataError

    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        raise DataError(f"{option} {path}: {describe_errors(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{option} {path}: {exc}") from exc
