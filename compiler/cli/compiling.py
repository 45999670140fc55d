"""``edgewise keygen`` and ``edgewise compile``: the signing key, and a model made a package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.contract import ContractError, PreprocessSpec, generate_keypair

from .. import arguments as arg
from ..compile.quantize import CALIBRATIONS, TARGETS
from ..errors import CompilerError, InputError
from ..failures import describe, one_line
from .common import Subparsers, writable_folder

if TYPE_CHECKING:
    from ..compile.pipeline import CompileOptions

EXIT_COMPILE = 2  # compile failed (bad input, missed accuracy budget); no package written


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
    comp.add_argument("--name", type=arg.name, required=True)
    comp.add_argument("--version", type=arg.version, required=True)
    comp.add_argument(
        "--key", type=arg.readable_file, required=True, help="Ed25519 private key (PEM)"
    )
    comp.add_argument("--out", type=arg.path, default=Path("packages"))
    comp.add_argument(
        "--data", default="digits", help="'digits', an image folder (<label>/<image>) or an .npz"
    )
    comp.add_argument(
        "--preprocess",
        help="TOML/JSON preprocessing spec (default: the data's own)",
        type=arg.readable_file,
    )
    comp.add_argument(
        "--seed", type=arg.non_negative_int, default=0, help="seed of the train/held-out split"
    )
    prune = comp.add_mutually_exclusive_group()
    prune.add_argument("--prune-ratio", type=arg.fraction, help="share of channels to remove")
    prune.add_argument("--target-macs", type=arg.fraction, help="prune to this fraction of MACs")
    comp.add_argument("--recovery-epochs", type=arg.non_negative_int, default=3)
    comp.add_argument(
        "--max-accuracy-drop", type=arg.non_negative_float, default=1.0, help="top-1 points"
    )
    comp.add_argument("--calibration", choices=CALIBRATIONS, default="minmax")
    comp.add_argument("--calibration-samples", type=arg.positive_int, default=256)
    comp.add_argument("--target", choices=TARGETS, help="default: this machine's ISA")
    comp.add_argument("--chunk-size", type=arg.positive_int, default=128 * 1024)
    comp.add_argument("--no-html", action="store_true", help="skip the HTML report")
    comp.set_defaults(func=run_compile)


def run_compile(args: argparse.Namespace) -> int:
    """Every failure exits 2 with one line and leaves no package behind."""
    from ..compile.datasets import DataError
    from ..compile.loading import load_model
    from ..compile.pipeline import check_signing_key, compile_model
    from ..compile.report_render import format_table
    from ..recipe.digits import load_dataset

    if args.out.exists():  # not created here: a failed compile leaves nothing behind
        writable_folder(args.out, "--out", create=False)
    try:
        check_signing_key(args.key)
        source = load_model(args.model, args.weights)
        dataset = load_dataset(args.data, seed=args.seed)
        spec = _read_spec(args.preprocess) if args.preprocess else dataset.preprocess
        if spec is None:
            raise DataError(
                f"--data {args.data}: give --preprocess (size, colour, scale, mean/std)"
            )
        result = compile_model(source, dataset, spec, _compile_options(args))
    except (CompilerError, ContractError, OSError) as exc:
        print(f"edgewise: compile failed: {one_line(describe(exc)[1])}", file=sys.stderr)
        return EXIT_COMPILE
    print(format_table(result.report))
    print(f"package: {result.package.root}")
    if result.html:
        print(f"report:  {result.html}")
    return 0


def _compile_options(args: argparse.Namespace) -> CompileOptions:
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
        recovery_epochs=args.recovery_epochs,
        html=not args.no_html,
        progress=sys.stderr.isatty(),
        output=args.output,
    )


def _read_spec(path: Path) -> PreprocessSpec:
    import tomllib
    from pydantic import ValidationError

    from ..compile.datasets import DataError

    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return PreprocessSpec.model_validate(data)
    except (OSError, ValueError, ValidationError) as exc:
        raise DataError(f"--preprocess {path}: {exc}") from exc
