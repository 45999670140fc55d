"""``edgewise train``, ``edgewise vad`` and ``edgewise demo``: the recipe on the bundled digits,
Silero VAD as a package, and the whole path once on this machine."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from agent.contract import ContractError

from .. import arguments as arg
from ..errors import CompilerError, InputError
from ..failures import EXIT_FAILED, describe, one_line
from .common import Subparsers, writable_folder


def add_train(sub: Subparsers) -> None:
    train = sub.add_parser(
        "train",
        help="a recipe: contrastive pre-training, then fine-tuning (bundled digits, or keyword "
        "spotting on generated speech)",
    )
    train.add_argument(
        "--task",
        choices=("digits", "kws"),
        default="digits",
        help="digits: the bundled handwritten digits; kws: keyword spotting (yes, no, up, down, "
        "left, right, on, off, stop, go) on speech generated with espeak-ng and sox",
    )
    train.add_argument(
        "--out", type=arg.path, help="digits: the pickled nn.Module to write (required)"
    )
    train.add_argument(
        "--workdir",
        type=arg.path,
        default=Path("kws-out"),
        help="kws: the speech cache (WORKDIR/cache) and the outputs (WORKDIR/model: model.pt, "
        "data.npz, preprocess.toml, postprocess.toml)",
    )
    train.add_argument(
        "--size", choices=("default", "small"), default="default", help="kws: the data and epochs"
    )
    train.add_argument(
        "--labeled-fraction", type=arg.labeled_fraction, default=1.0,
        help="digits: the share of training images whose labels fine-tuning sees",
    )  # fmt: skip
    train.add_argument(
        "--pretrain-epochs",
        type=arg.non_negative_int,
        help="0 trains from scratch (default: 10 for digits, the size's for kws)",
    )
    train.add_argument(
        "--epochs",
        type=arg.positive_int,
        help="fine-tuning epochs (default: 6 for digits, the size's for kws)",
    )
    train.add_argument("--seed", type=arg.non_negative_int, default=0, help="random seed")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.task == "kws":
        return run_train_kws(args)
    import torch

    from ..recipe.demo_model import torch_accuracy
    from ..recipe.digits import PREPROCESS, load_dataset
    from ..recipe.pretrain import train_recipe

    if args.out is None:
        raise InputError("--task digits needs --out, the model file to write")
    writable_folder(args.out.parent, "--out's folder", create=False)
    if args.out.is_dir():
        raise InputError(f"--out {args.out} is a folder; name the model file to write")
    data = load_dataset("digits", seed=args.seed)
    model = train_recipe(
        data.train,
        PREPROCESS,
        labeled_fraction=args.labeled_fraction,
        pretrain_epochs=10 if args.pretrain_epochs is None else args.pretrain_epochs,
        finetune_epochs=6 if args.epochs is None else args.epochs,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    torch.save(model, args.out)
    print(f"held-out accuracy {torch_accuracy(model, data.test, PREPROCESS):.4f} -> {args.out}")
    return 0


def add_vad(sub: Subparsers) -> None:
    vad = sub.add_parser(
        "vad",
        help="package Silero VAD (the silero-vad wheel's ONNX file) for a device's [gate]",
        description="Silero VAD as a signed package, in float: it is 2.3 MB and runs a 32 ms "
        "chunk in about 0.1 ms already, and its LSTM does not take static int8 well. Speech "
        "recall/precision (on espeak-ng speech, silence and noise) and latency go in its "
        "manifest's metrics.",
    )
    vad.add_argument("--key", type=arg.readable_file, required=True, help="Ed25519 private key")
    vad.add_argument("--out", type=arg.path, required=True, help="folder for NAME-VERSION/")
    vad.add_argument("--name", type=arg.name, default="vad", help="the package's name")
    vad.add_argument(
        "--version", type=arg.version, default="1.0.0", help="the package's MAJOR.MINOR.PATCH"
    )
    vad.add_argument(
        "--threshold", type=arg.fraction, default=0.5, help="speech probability that opens the gate"
    )
    vad.set_defaults(func=run_vad)


def run_vad(args: argparse.Namespace) -> int:
    """One line with the package's folder; any failure one line (exit 2, 65 or 1 as for
    compile), no package."""
    from ..recipe.vad import VadOptions, package_vad

    if args.out.exists():  # not created here: a failed run leaves nothing behind
        writable_folder(args.out, "--out", create=False)
    options = VadOptions(args.out, args.key, args.name, args.version, args.threshold)
    try:
        with tempfile.TemporaryDirectory() as work:
            package = package_vad(options, Path(work))
    except (CompilerError, ContractError, OSError) as exc:
        code, message = describe(exc)
        print(f"edgewise: vad failed: {one_line(message)}", file=sys.stderr)
        return code
    print(f"package: {package.root}")
    return 0


def run_train_kws(args: argparse.Namespace) -> int:
    from ..recipe.speech import require_tools

    if args.out is not None:
        raise InputError("--out is for --task digits; kws writes into --workdir/model")
    if args.labeled_fraction != 1.0:
        raise InputError("--labeled-fraction is for --task digits")
    require_tools()  # before any work: one line when espeak-ng or sox is missing
    writable_folder(args.workdir, "--workdir")
    from ..recipe.kws import train_kws

    outcome = train_kws(
        args.workdir,
        size=args.size,
        seed=args.seed,
        pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.epochs,
        progress=sys.stderr.isatty(),
    )
    print(f"held-out voices: per-window accuracy {outcome.accuracy:.4f}")
    print(f"{'keyword':<10}{'recall':>8}{'threshold':>11}")
    for word, recall in outcome.recall.items():
        print(f"{word:<10}{recall:>8.3f}{outcome.thresholds[word]:>11.3f}")
    print(f"trained in {outcome.seconds:.0f} s ({outcome.synthesized} clips synthesized)")
    for path in outcome.files.values():
        print(f"wrote {path}")
    return 0


def add_demo(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="train, compile, push and run the agent end to end")
    demo.add_argument(
        "--workdir", type=arg.path, default=Path("demo-out"), help="folder for all it writes"
    )
    demo.add_argument(
        "--digits", type=arg.positive_int, default=100, help="digit images the agent classifies"
    )
    demo.add_argument(
        "--embedded-broker", action="store_true", help="use amqtt even if mosquitto exists"
    )
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..recipe import demo

    writable_folder(args.workdir, "--workdir")
    outcome = demo.run_demo(args.workdir, args.digits, args.embedded_broker)
    return 0 if outcome.results and outcome.accuracy >= 0.9 else EXIT_FAILED
